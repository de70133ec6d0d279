"""Backend services (global and regional) with getHealth, URL maps with weighted backend services, and the
reference checks the real API makes on them. Health checks are plain generic collections.

getHealth answers per member instance of a managed group: HEALTHY, unless the control API set the
instance UNHEALTHY or created it from a template marked failing (groups.health_of).
"""

from . import groups
from .errors import ApiError, not_found
from .store import key_of, scope_of, self_link


def reference(world, ref, owner_key, where, collections):
    """The full URL of `ref`, which must name an existing resource in one of `collections`, in the scope
    the owner's scope allows (a regional owner: its own region; a global owner: global)."""
    project = owner_key.split("/")[1]
    key = key_of(ref, project)
    if key is None or key.split("/")[-2] not in collections:
        raise ApiError(400, f"Invalid value for field '{where}': '{ref}'. Expected a reference to one of "
                       f"{', '.join(collections)}.")
    exists = key in world.resources or (
        key.split("/")[-2] == "instanceGroups" and groups.group_members(world, key) is not None)
    if not exists:
        raise not_found(key)
    return self_link(key), key


def scoped(owner_key, key, where, ref):
    """Regional load balancing resources refer to resources of their own region, global ones to global."""
    owner_scope = scope_of(owner_key)
    target_scope = scope_of(key)
    if owner_scope[0] == "region" and target_scope[0] in ("region",) and owner_scope != target_scope:
        raise ApiError(400, f"Invalid value for field '{where}': '{ref}'. Cross-region references are not "
                       "allowed.")
    if owner_scope[0] == "global" and target_scope[0] == "region":
        raise ApiError(400, f"Invalid value for field '{where}': '{ref}'. A global resource cannot refer to "
                       "a regional one.")
    if owner_scope[0] == "region" and target_scope[0] == "global" and key.split("/")[-2] == "backendServices":
        raise ApiError(400, f"Invalid value for field '{where}': '{ref}'. A regional URL map needs "
                       "regional backend services.")


def check_backend_service(world, key, service):
    seen = set()
    for i, backend in enumerate(service.get("backends") or []):
        where = f"resource.backends[{i}].group"
        if not backend.get("group"):
            raise ApiError(400, f"Required field '{where}' not specified", reason="required")
        link, group_key = reference(world, backend["group"], key, where,
                                    ("instanceGroups", "networkEndpointGroups"))
        if link in seen:
            raise ApiError(400, f"Invalid value for field '{where}': '{backend['group']}'. Duplicate backend "
                           "group.")
        seen.add(link)
        backend["group"] = link
    checks = service.get("healthChecks") or []
    for i, ref in enumerate(checks):
        where = f"resource.healthChecks[{i}]"
        link, check_key = reference(world, ref, key, where, ("healthChecks", "httpHealthChecks",
                                                             "httpsHealthChecks"))
        scoped(key, check_key, where, ref)
        checks[i] = link


def check_url_map(world, key, url_map):
    route = url_map.get("defaultRouteAction") or {}
    weighted = route.get("weightedBackendServices") or []
    set_ = [name for name, present in (("defaultService", bool(url_map.get("defaultService"))),
                                       ("defaultRouteAction.weightedBackendServices", bool(weighted)),
                                       ("defaultUrlRedirect", bool(url_map.get("defaultUrlRedirect"))))
            if present]
    if len(set_) > 1:
        raise ApiError(400, f"Invalid value for field 'resource': only one of {', '.join(set_)} may be set")
    if url_map.get("defaultService"):
        link, service_key = reference(world, url_map["defaultService"], key, "resource.defaultService",
                                      ("backendServices", "backendBuckets"))
        scoped(key, service_key, "resource.defaultService", url_map["defaultService"])
        url_map["defaultService"] = link
    for i, item in enumerate(weighted):
        where = f"resource.defaultRouteAction.weightedBackendServices[{i}]"
        if not item.get("backendService"):
            raise ApiError(400, f"Required field '{where}.backendService' not specified", reason="required")
        weight = int(item.get("weight", 0))
        if not 0 <= weight <= 1000:
            raise ApiError(400, f"Invalid value for field '{where}.weight': {weight}. Must be in [0, 1000].")
        link, service_key = reference(world, item["backendService"], key, f"{where}.backendService",
                                      ("backendServices",))
        scoped(key, service_key, f"{where}.backendService", item["backendService"])
        item["backendService"] = link
    for i, matcher in enumerate(url_map.get("pathMatchers") or []):
        if matcher.get("defaultService"):
            where = f"resource.pathMatchers[{i}].defaultService"
            link, service_key = reference(world, matcher["defaultService"], key, where,
                                          ("backendServices", "backendBuckets"))
            scoped(key, service_key, where, matcher["defaultService"])
            matcher["defaultService"] = link


def handlers(read, mutation, generic, with_check):
    def get_health(world, method, key, params, body):
        service_key = key.rsplit("/", 1)[0]
        service = world.get(service_key)
        project = service_key.split("/")[1]
        group_key = key_of(body.get("group"), project)
        group_link = self_link(group_key) if group_key else None
        if group_link not in [b.get("group") for b in service.get("backends") or []]:
            raise ApiError(400, f"Invalid value for field 'resourceGroupReference.group': "
                           f"'{body.get('group')}'. The group is not a backend of '{service_key}'.")
        found = groups.group_members(world, group_key)
        statuses = []
        for record in (found[1] if found else []):
            if record["status"] != "RUNNING":
                continue
            statuses.append({
                "instance": self_link(record["key"]),
                "ipAddress": record["ip"],
                "port": int(service.get("port", 80)),
                "healthState": groups.health_of(world, record),
            })
        out = {"kind": "compute#backendServiceGroupHealth"}
        if statuses:
            out["healthStatus"] = statuses
        return read(out)

    out = {}
    for resource in ("backendServices", "regionBackendServices"):
        for verb in ("insert", "patch", "update"):
            out[f"compute.{resource}.{verb}"] = with_check(check_backend_service, generic[verb])
        out[f"compute.{resource}.getHealth"] = get_health
    for resource in ("urlMaps", "regionUrlMaps"):
        for verb in ("insert", "patch", "update"):
            out[f"compute.{resource}.{verb}"] = with_check(check_url_map, generic[verb])
    return out

