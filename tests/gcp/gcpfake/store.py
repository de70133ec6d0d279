"""The fake's world: resources stored as JSON under their path, long-running operations, the call log, and
the generic insert / get / list / delete / patch / update that every collection of the document gets.

A resource's key is its path under the service, e.g. `projects/p/regions/r/instanceGroupManagers/web`;
its selfLink is SELF_LINK_BASE + key, as the real API writes them.
"""

import base64
import copy
import datetime
import os
import re
import uuid

from .errors import ApiError, not_found

SELF_LINK_BASE = "https://www.googleapis.com/compute/v1/"
# The account that operations name as their `user`.
USER = "stele-test@stele-fake.iam.gserviceaccount.com"


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def new_fingerprint():
    # Compute Engine writes its `format: byte` fields in URL-safe base64 ("ERw4s-BfXxs="), which the
    # generated Rust clients decode with the URL-safe alphabet only: a `/` or `+` here fails them.
    return base64.urlsafe_b64encode(os.urandom(8)).decode()


def self_link(key):
    return SELF_LINK_BASE + key


def key_of(ref, project=None):
    """The key a reference names: a full URL (any host) with `/projects/...`, `projects/...`, or a
    project-relative `global/...`, `regions/...`, `zones/...`. None when it names nothing that way."""
    if not isinstance(ref, str) or not ref:
        return None
    at = ref.find("projects/")
    if at >= 0 and (at == 0 or ref[at - 1] == "/"):
        return ref[at:].rstrip("/")
    if project and re.match(r"^(global|regions|zones)/", ref):
        return f"projects/{project}/{ref}".rstrip("/")
    return None


def scope_of(key):
    """('region', name) / ('zone', name) / ('global', None) for a key under projects/P/."""
    parts = key.split("/")
    if len(parts) > 3 and parts[2] == "regions":
        return "region", parts[3]
    if len(parts) > 3 and parts[2] == "zones":
        return "zone", parts[3]
    return "global", None


def scope_prefix(key):
    """projects/P/regions/R, projects/P/zones/Z or projects/P/global for a key."""
    parts = key.split("/")
    kind, _ = scope_of(key)
    return "/".join(parts[:4]) if kind != "global" else "/".join(parts[:2]) + "/global"


class World:
    def __init__(self, discovery):
        self.discovery = discovery
        self.reset()

    def reset(self):
        self.resources = {}  # key -> resource JSON
        self.operations = {}  # key -> {"op": Operation JSON, "polls_left": n, "final": {...}}
        self.request_ids = {}  # requestId -> operation key
        self.instances = {}  # key (projects/p/zones/z/instances/n) -> instance record (see groups.py)
        self.health = {}  # instance key -> HEALTHY / UNHEALTHY set by the control API
        self.failing_templates = set()  # template keys whose instances never become healthy
        self.fail_next = []  # [{method, code, reason, message, sync}] injected failures
        self.calls = []
        self.created = 0  # instances ever created (the record of a deleted one is forgotten)
        self.next_id = 1000000000000000001
        self.config = {"operationPolls": 2, "instanceIpPrefix": "10.128",
                       "requireAuth": getattr(self, "defaults_require_auth", True)}
        self.next_ip = 2

    def new_id(self):
        self.next_id += 7919
        return str(self.next_id)

    def schema_props(self, schema_name):
        return self.discovery.schemas.get(schema_name, {}).get("properties", {})

    # ---- output-only fields ---------------------------------------------------------------------

    def fill_output(self, resource, key, schema_name):
        """Sets the output-only fields the schema has: kind, id, creationTimestamp, selfLink, region/zone,
        fingerprint, labelFingerprint."""
        props = self.schema_props(schema_name)
        for name, prop in props.items():
            if prop.get("readOnly") and name in resource and name not in ("kind", "id", "selfLink"):
                del resource[name]  # The real API ignores output-only input.
        if "kind" in props and "default" in props["kind"]:
            resource["kind"] = props["kind"]["default"]
        resource["id"] = self.new_id()
        resource["creationTimestamp"] = now()
        resource["selfLink"] = self_link(key)
        kind, where = scope_of(key)
        project = key.split("/")[1]
        if kind == "region" and "region" in props:
            resource["region"] = self_link(f"projects/{project}/regions/{where}")
        if kind == "zone" and "zone" in props:
            resource["zone"] = self_link(f"projects/{project}/zones/{where}")
        if "fingerprint" in props:
            resource["fingerprint"] = new_fingerprint()
        if "labelFingerprint" in props:
            resource["labelFingerprint"] = new_fingerprint()
        return resource

    def get(self, key):
        resource = self.resources.get(key)
        if resource is None:
            raise not_found(key)
        return resource

    # ---- generic methods -------------------------------------------------------------------------

    def insert(self, method, key_prefix, body):
        key = f"{key_prefix}/{body['name']}"
        if key in self.resources:
            raise ApiError(409, f"The resource '{key}' already exists", reason="alreadyExists")
        resource = self.fill_output(copy.deepcopy(body), key, method.request_ref)
        return key, resource

    def listing(self, method, prefix, params, items=None):
        """A list response: items directly under `prefix`, filtered, ordered and paged as asked."""
        if items is None:
            items = [r for k, r in self.resources.items() if k.rsplit("/", 1)[0] == prefix]
        items = apply_filter(items, params.get("filter"))
        order = params.get("orderBy")
        if order in (None, "", "name"):
            items.sort(key=lambda r: r.get("name", ""))
        elif order == "creationTimestamp desc":
            items.sort(key=lambda r: (r.get("creationTimestamp", ""), r.get("id", "")), reverse=True)
        else:
            raise ApiError(400, f"Invalid value for field 'orderBy': {order!r}. Only 'name' and "
                           "'creationTimestamp desc' are supported.")
        page, token = paginate(items, params)
        out = {"id": prefix, "items": page, "selfLink": self_link(prefix)}
        response_props = self.schema_props(method.response_ref)
        if "kind" in response_props and "default" in response_props["kind"]:
            out["kind"] = response_props["kind"]["default"]
        if token:
            out["nextPageToken"] = token
        return {k: v for k, v in out.items() if k in response_props or not response_props}

    def check_fingerprint(self, stored, body, schema_name):
        """412 conditionNotMet when the body's fingerprint is stale, or missing where the schema says an
        up-to-date one must be provided."""
        prop = self.schema_props(schema_name).get("fingerprint")
        if prop is None or "fingerprint" not in stored:
            return
        given = body.get("fingerprint")
        needed = "must be provided" in prop.get("description", "")
        if (given is None and needed) or (given is not None and given != stored["fingerprint"]):
            raise ApiError(
                412,
                "Supplied fingerprint does not match current fingerprint."
                if given is not None
                else "Required field 'fingerprint' not specified: an up-to-date fingerprint must be provided",
                reason="conditionNotMet",
            )

    def merged(self, stored, body, schema_name):
        """`stored` with `body` merged in (objects merge, arrays and scalars replace, null clears), the
        output-only fields untouched and a new fingerprint."""
        props = self.schema_props(schema_name)
        result = copy.deepcopy(stored)
        for name, value in body.items():
            if props.get(name, {}).get("readOnly") or name in ("fingerprint", "id", "selfLink", "kind",
                                                                 "creationTimestamp"):
                continue
            if name == "name" and value != stored.get("name"):
                raise ApiError(400, f"Invalid value for field 'resource.name': {value!r}. The name of a "
                               "resource cannot be changed.")
            result[name] = merge(result.get(name), value)
            if result[name] is None:
                del result[name]
        if "fingerprint" in result:
            result["fingerprint"] = new_fingerprint()
        return result

    def replaced(self, stored, body, schema_name):
        """`body` as the whole new resource (update / PUT), keeping the output-only fields."""
        props = self.schema_props(schema_name)
        if body.get("name") not in (None, stored.get("name")):
            raise ApiError(400, f"Invalid value for field 'resource.name': {body.get('name')!r}. The name "
                           "of a resource cannot be changed.")
        result = {k: copy.deepcopy(v) for k, v in body.items() if not props.get(k, {}).get("readOnly")}
        for name, prop in props.items():
            if (prop.get("readOnly") or name in ("id", "selfLink", "kind", "creationTimestamp", "name")) \
                    and name in stored:
                result[name] = stored[name]
        if "fingerprint" in stored:
            result["fingerprint"] = new_fingerprint()
        return result

    def in_use_by(self, key, ignore=()):
        """The key of a stored resource that refers to `key` (by selfLink or relative path), if any."""
        link = self_link(key)
        relative = "/".join(key.split("/")[2:])
        for other_key, other in self.resources.items():
            if other_key == key or other_key in ignore or "/operations/" in other_key:
                continue
            if refers_to(other, link, key, relative):
                return other_key
        return None

    # ---- operations ------------------------------------------------------------------------------

    def operation(self, method, target_key, target=None, error=None, params=None):
        """A new Operation for a call on `target_key`, scoped like the call, PENDING; `error` (a dict
        {code, reason, message}) makes it end DONE with that error."""
        prefix = scope_prefix(target_key)
        name = f"operation-{int(datetime.datetime.now().timestamp() * 1000)}-{uuid.uuid4().hex[:13]}"
        key = f"{prefix}/operations/{name}"
        verb = method.verb
        op = {
            "kind": "compute#operation",
            "id": self.new_id(),
            "name": name,
            "operationType": verb if verb in ("insert", "delete", "patch", "update") else method.id,
            "targetLink": self_link(target_key),
            "user": USER,
            "progress": 0,
            "insertTime": now(),
            "selfLink": self_link(key),
        }
        if target is not None and "id" in target:
            op["targetId"] = target["id"]
        kind, where = scope_of(target_key)
        project = target_key.split("/")[1]
        if kind == "region":
            op["region"] = self_link(f"projects/{project}/regions/{where}")
        elif kind == "zone":
            op["zone"] = self_link(f"projects/{project}/zones/{where}")
        polls = int(self.config.get("operationPolls", 2))
        entry = {"op": op, "polls_left": polls, "error": error}
        self.operations[key] = entry
        self.advance(entry, steps=0)
        request_id = (params or {}).get("requestId")
        if request_id:
            self.request_ids[request_id] = key
        return copy.deepcopy(op)

    def advance(self, entry, steps=1):
        """Moves an operation on by `steps` polls: PENDING, then RUNNING, then DONE."""
        entry["polls_left"] = max(0, entry["polls_left"] - steps)
        op = entry["op"]
        if entry["polls_left"] >= 2:
            op["status"] = "PENDING"
        elif entry["polls_left"] == 1:
            op["status"] = "RUNNING"
            op.setdefault("startTime", now())
        else:
            op["status"] = "DONE"
            op.setdefault("startTime", now())
            op.setdefault("endTime", now())
            op["progress"] = 100
            err = entry.get("error")
            if err and "error" not in op:
                op["error"] = {"errors": [{"code": err["reason"], "message": err["message"]}]}
                op["httpErrorStatusCode"] = err["code"]
                op["httpErrorMessage"] = err.get("httpMessage", err["reason"].upper())

    def poll(self, key, wait=False):
        entry = self.operations.get(key)
        if entry is None:
            raise not_found(key)
        self.advance(entry, steps=entry["polls_left"] if wait else 1)
        return copy.deepcopy(entry["op"])

    def replay(self, params):
        """The operation an earlier call with the same requestId started, if any (the real API's
        idempotency: the retried call is not applied again)."""
        request_id = params.get("requestId")
        if not request_id:
            return None
        try:
            parsed = uuid.UUID(request_id)
        except ValueError as e:
            raise ApiError(400, f"Invalid value for field 'requestId': {request_id!r}. Must be a UUID.") from e
        if parsed.int == 0:
            raise ApiError(400, "Invalid value for field 'requestId': the zero UUID is not supported.")
        key = self.request_ids.get(request_id)
        return copy.deepcopy(self.operations[key]["op"]) if key in self.operations else None

    def injected_failure(self, method_id):
        """The first injected failure for `method_id` (removed), or None."""
        for i, failure in enumerate(self.fail_next):
            if failure["method"] == method_id:
                return self.fail_next.pop(i)
        return None


def refers_to(value, link, key, relative):
    if isinstance(value, str):
        return value in (link, key, relative) or value.endswith("/" + key)
    if isinstance(value, dict):
        return any(refers_to(v, link, key, relative) for k, v in value.items() if k != "selfLink")
    if isinstance(value, list):
        return any(refers_to(v, link, key, relative) for v in value)
    return False


def merge(old, new):
    if isinstance(old, dict) and isinstance(new, dict):
        out = dict(old)
        for k, v in new.items():
            out[k] = merge(out.get(k), v)
            if out[k] is None:
                del out[k]
        return out
    return copy.deepcopy(new)


def paginate(items, params):
    size = params.get("maxResults", 500)
    if not 0 <= size <= 500:
        raise ApiError(400, f"Invalid value for field 'maxResults': {size}. Must be in [0, 500].")
    size = size or 500
    token = params.get("pageToken")
    start = 0
    if token:
        try:
            start = int(base64.urlsafe_b64decode(token.encode()).decode())
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"Invalid value for field 'pageToken': {token!r}") from e
    end = start + size
    next_token = base64.urlsafe_b64encode(str(end).encode()).decode() if end < len(items) else None
    return items[start:end], next_token


FILTER_TERM = re.compile(r'\s*\(?\s*([A-Za-z0-9_.]+)\s*(=|!=|eq|ne)\s*("([^"]*)"|[^\s)]+)\s*\)?\s*(AND\s+)?')


def apply_filter(items, expression):
    """The subset of the list filter grammar the fake understands: terms `field = value`, `field != value`
    (exact), `field eq regex`, `field ne regex` (whole match), joined by AND or juxtaposition. Anything
    else is refused with 400, so a test never silently gets an unfiltered list."""
    if not expression:
        return list(items)
    terms, pos = [], 0
    while pos < len(expression):
        m = FILTER_TERM.match(expression, pos)
        if not m or m.end() == pos:
            raise ApiError(400, f"Invalid list filter expression {expression!r} (the GCP fake understands "
                           "`field = value`, `field != value`, `field eq regex`, `field ne regex`, joined by AND)")
        value = m.group(4) if m.group(4) is not None else m.group(3)
        terms.append((m.group(1), m.group(2), value))
        pos = m.end()

    def field(resource, path):
        for part in path.split("."):
            resource = resource.get(part) if isinstance(resource, dict) else None
        if isinstance(resource, bool):
            return "true" if resource else "false"
        return None if resource is None else str(resource)

    def ok(resource):
        for path, op, value in terms:
            got = field(resource, path)
            if op == "=" and got != value:
                return False
            if op == "!=" and got == value:
                return False
            if op == "eq" and (got is None or not re.fullmatch(value, got)):
                return False
            if op == "ne" and got is not None and re.fullmatch(value, got):
                return False
        return True

    return [r for r in items if ok(r)]
