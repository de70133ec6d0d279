"""Serving one validated call: the generic collection methods, the per-method special cases (groups.py,
traffic.py), operations and the requestId replay.

A handler returns either Read(json) or Mutation(target_key, commit): the change is validated before
`commit` runs; `commit()` applies it and returns the target resource. Every Mutation answers with an
Operation, as every mutating Compute method does.
"""

import re

from . import groups, traffic
from .errors import ApiError, not_found

NAME_RE = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")


class Read:
    def __init__(self, body):
        self.body = body


class Mutation:
    def __init__(self, target_key, commit, resource=None):
        self.target_key = target_key
        self.commit = commit
        self.resource = resource  # the resource that commit() stores, when there is one


def expand(method, params):
    """The key of the call: the method's path with its path parameters filled in."""
    return re.sub(r"\{\+?([A-Za-z0-9_]+)\}", lambda m: str(params[m.group(1)]), method.path)


def serve(world, method, params, body):
    """(HTTP status, JSON) for a call whose path, parameters and body the document accepted."""
    mutating = method.http_method != "GET" and not method.resource.endswith("Operations") \
        and method.response_ref == "Operation"
    if mutating:
        replayed = world.replay(params)
        if replayed is not None:
            return 200, replayed
    failure = world.injected_failure(method.id) if mutating else None
    if failure is not None and failure.get("sync"):
        raise ApiError(failure["code"], failure["message"], reason=failure["reason"])
    key = expand(method, params)
    handler = SPECIAL.get(method.id) or GENERIC.get(method.verb)
    if handler is None:
        raise ApiError(501, f"{method.id} is a method of the compute v1 API that the GCP fake does not "
                       "model (see tests/gcp/fake.py for the list it serves)", reason="notImplemented")
    result = handler(world, method, key, params, body)
    if isinstance(result, Read):
        return 200, result.body
    if failure is not None:
        target = world.resources.get(result.target_key)
        return 200, world.operation(method, result.target_key, target, error=failure, params=params)
    target = result.commit()
    return 200, world.operation(method, result.target_key, target, params=params)


# ---- generic collection methods ------------------------------------------------------------------


def g_insert(world, method, key, params, body):
    name = body.get("name")
    if not name:
        raise ApiError(400, "Required field 'resource.name' not specified", reason="required")
    if not NAME_RE.fullmatch(name):
        raise ApiError(400, f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex "
                       "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
    target_key, resource = world.insert(method, key, body)

    def commit():
        world.resources[target_key] = resource
        return resource

    return Mutation(target_key, commit, resource)


def g_get(world, method, key, params, body):
    if method.resource.endswith("Operations"):
        return Read(world.poll(key))
    return Read(world.get(key))


def g_wait(world, method, key, params, body):
    return Read(world.poll(key.rsplit("/wait", 1)[0], wait=True))


def g_list(world, method, key, params, body):
    if method.resource.endswith("Operations"):
        ops = [e["op"] for k, e in world.operations.items() if k.rsplit("/", 1)[0] == key]
        return Read(world.listing(method, key, params, items=ops))
    return Read(world.listing(method, key, params))


def g_delete(world, method, key, params, body):
    if method.resource.endswith("Operations"):
        if world.operations.pop(key, None) is None:
            raise not_found(key)
        return Read({})
    resource = world.get(key)
    user = world.in_use_by(key)
    if user is not None:
        kind = re.sub(r"(?<!^)(?=[A-Z])", "_", key.split("/")[-2].rstrip("s")).lower()
        raise ApiError(400, f"The {kind} resource '{key}' is already being used by '{user}'",
                       reason="resourceInUseByAnotherResource")

    def commit():
        world.resources.pop(key, None)
        return resource

    return Mutation(key, commit)


def g_patch(world, method, key, params, body):
    stored = world.get(key)
    world.check_fingerprint(stored, body, method.request_ref)
    new = world.merged(stored, body, method.request_ref)
    return store_change(world, key, new)


def g_update(world, method, key, params, body):
    stored = world.get(key)
    world.check_fingerprint(stored, body, method.request_ref)
    new = world.replaced(stored, body, method.request_ref)
    return store_change(world, key, new)


def store_change(world, key, new):
    def commit():
        world.resources[key] = new
        return new

    return Mutation(key, commit, new)


def with_check(check, generic):
    """A generic method whose resulting resource `check(world, key, resource)` validates (and may
    normalize in place, e.g. references to full URLs) before anything is applied."""

    def handler(world, method, key, params, body):
        result = generic(world, method, key, params, body)
        if isinstance(result, Mutation) and result.resource is not None:
            check(world, result.target_key, result.resource)
        return result

    return handler


def images_get_from_family(world, method, key, params, body):
    project, family = params["project"], params["family"]
    prefix = f"projects/{project}/global/images"
    found = [r for k, r in world.resources.items() if k.rsplit("/", 1)[0] == prefix
             and r.get("family") == family and "deprecated" not in r]
    if not found:
        raise ApiError(404, f"The resource 'projects/{project}/global/images/family/{family}' was not found")
    return Read(max(found, key=lambda r: r.get("creationTimestamp", "")))


def instances_get(world, method, key, params, body):
    record = world.instances.get(key)
    if record is None:
        raise not_found(key)
    return Read(groups.instance_json(world, record))


def instances_list(world, method, key, params, body):
    items = [groups.instance_json(world, r) for k, r in world.instances.items() if k.rsplit("/", 1)[0] == key]
    return Read(world.listing(method, key, params, items=items))


GENERIC = {
    "insert": g_insert,
    "get": g_get,
    "list": g_list,
    "delete": g_delete,
    "patch": g_patch,
    "update": g_update,
    "wait": g_wait,
}

SPECIAL = {
    "compute.images.getFromFamily": images_get_from_family,
    "compute.instances.get": instances_get,
    "compute.instances.list": instances_list,
}
SPECIAL.update(groups.handlers(Read, Mutation, g_get, g_list))
SPECIAL.update(traffic.handlers(Read, Mutation, GENERIC, with_check))
