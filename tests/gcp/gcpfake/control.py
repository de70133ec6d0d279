"""The control API under /_fake/: how a test sets the scene and reads what happened. Not Google's API."""

import json

from . import groups
from .errors import ApiError
from .store import key_of, new_fingerprint, now, self_link

IMAGE_STATUSES = ("READY", "PENDING", "FAILED", "DELETING")
HEALTH_STATES = ("HEALTHY", "UNHEALTHY")


def serve(world, http_method, path, body_bytes):
    try:
        body = json.loads(body_bytes or b"{}")
    except json.JSONDecodeError as e:
        raise ApiError(400, f"control API: the body is not JSON: {e}") from e
    if not isinstance(body, dict):
        raise ApiError(400, "control API: the body must be a JSON object")
    route = (http_method, path.rstrip("/") or "/_fake")
    handler = ROUTES.get(route)
    if handler is None:
        raise ApiError(404, f"control API: no {http_method} {path} (see tests/gcp/fake.py)")
    return 200, handler(world, body)


def info(world, body):
    return {"discovery": world.discovery.path, "revision": world.discovery.doc.get("revision"),
            "methods": len(world.discovery.methods)}


def reset(world, body):
    world.reset()
    return {}


def config(world, body):
    known = {"operationPolls": int, "instanceIpPrefix": str, "requireAuth": bool}
    for key, value in body.items():
        if key not in known or not isinstance(value, known[key]) or isinstance(value, bool) != (known[key] is bool):
            raise ApiError(400, f"control API: config {key}={value!r} is unknown or of the wrong type")
        world.config[key] = value
    return dict(world.config)


def seed_image(world, body):
    project, name = body.get("project"), body.get("name")
    if not project or not name:
        raise ApiError(400, "control API: an image needs project and name")
    status = body.get("status", "READY")
    if status not in IMAGE_STATUSES:
        raise ApiError(400, f"control API: image status {status!r} is not one of {IMAGE_STATUSES}")
    key = f"projects/{project}/global/images/{name}"
    image = {
        "kind": "compute#image", "id": world.new_id(), "name": name, "selfLink": self_link(key),
        "creationTimestamp": now(), "status": status, "sourceType": "RAW", "diskSizeGb": "10",
        "archiveSizeBytes": "1073741824", "architecture": "X86_64",
        "labels": dict(body.get("labels") or {}), "labelFingerprint": new_fingerprint(),
    }
    if body.get("family"):
        image["family"] = body["family"]
    world.discovery.check_value(image, {"$ref": "Image"}, "image", "control")
    world.resources[key] = image
    return image


def set_health(world, body):
    ref, state = body.get("instance"), body.get("state")
    matches = [k for k, r in world.instances.items() if k == key_of(ref) or r["name"] == ref]
    if len(matches) != 1:
        raise ApiError(404, f"control API: {len(matches)} instances match {ref!r}")
    if state is None:
        world.health.pop(matches[0], None)
    elif state in HEALTH_STATES:
        world.health[matches[0]] = state
    else:
        raise ApiError(400, f"control API: health state {state!r} is not one of {HEALTH_STATES}")
    return {"instance": self_link(matches[0]), "state": state}


def failing_template(world, body):
    ref = body.get("template", "")
    key = key_of(ref) or next((k for k in world.resources if "/instanceTemplates/" in k
                               and k.rsplit("/", 1)[1] == ref), None)
    if key is None:
        raise ApiError(404, f"control API: no instance template {ref!r}")
    if body.get("failing", True):
        world.failing_templates.add(key)
    else:
        world.failing_templates.discard(key)
    return {"template": self_link(key), "failing": key in world.failing_templates}


def fail_next(world, body):
    method = body.get("method")
    if method not in world.discovery.by_id:
        raise ApiError(400, f"control API: {method!r} is not a method id of the discovery document")
    failure = {"method": method, "code": int(body.get("code", 400)), "reason": body.get("reason", "invalid"),
               "message": body.get("message", f"injected failure of {method}"), "sync": bool(body.get("sync"))}
    world.fail_next.append(failure)
    return failure


def calls(world, body):
    return {"calls": list(world.calls)}


def clear_calls(world, body):
    world.calls.clear()
    return {}


def instances(world, body):
    out = []
    for record in sorted(world.instances.values(), key=lambda r: (r["created"], r["name"])):
        item = {k: v for k, v in record.items() if k != "key"}
        item["selfLink"] = self_link(record["key"])
        item["health"] = groups.health_of(world, record)
        out.append(item)
    return {"instances": out, "created": world.created}


ROUTES = {
    ("GET", "/_fake"): info,
    ("POST", "/_fake/reset"): reset,
    ("POST", "/_fake/config"): config,
    ("POST", "/_fake/images"): seed_image,
    ("POST", "/_fake/health"): set_health,
    ("POST", "/_fake/failing-template"): failing_template,
    ("POST", "/_fake/fail-next"): fail_next,
    ("GET", "/_fake/calls"): calls,
    ("POST", "/_fake/calls/clear"): clear_calls,
    ("GET", "/_fake/instances"): instances,
}
