"""Managed instance groups, zonal (instanceGroupManagers) and regional (regionInstanceGroupManagers), and the
fake instances they own.

An instance is a record, not a VM: it is RUNNING as soon as it is created (currentAction NONE), has a
private IP from config `instanceIpPrefix`, and its health is the control API's say (HEALTHY unless set
otherwise or created from a template marked failing).

Sizing and versions: the group keeps `targetSize` instances. New instances take the version furthest below
its target (`versions[].targetSize` fixed or percent, floor; the version without a target takes the
rest). Shrinking removes instances on no current version first, then the newest. With
`updatePolicy.type` PROACTIVE (the API's default) the fake moves instances onto their target versions at
once, recreating them in place; with OPPORTUNISTIC it never touches existing instances on its own.
"""

import copy
import random
import re
import string

from .errors import ApiError, not_found
from .store import key_of, new_fingerprint, now, paginate, scope_of, self_link

ZONE_SUFFIXES = ("a", "b", "c")
NAME_RE = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")


def igm_key_to_group(key):
    return key.replace("/instanceGroupManagers/", "/instanceGroups/")


def zones_of(mig_key, mig):
    kind, where = scope_of(mig_key)
    if kind == "zone":
        return [where]
    zones = [z.get("zone", "").rstrip("/").split("/")[-1] for z in
             (mig.get("distributionPolicy") or {}).get("zones") or []]
    return [z for z in zones if z] or [f"{where}-{s}" for s in ZONE_SUFFIXES]


def members(world, mig_key):
    return sorted((r for r in world.instances.values() if r["mig"] == mig_key),
                  key=lambda r: (r["created"], r["name"]))


def template_link(world, ref, project, where):
    """The full URL of the instance template `ref` names; 400 if it names none, 404 if it is missing."""
    key = key_of(ref, project)
    if key is None and isinstance(ref, str) and "/" not in ref and ref:
        key = f"projects/{project}/global/instanceTemplates/{ref}"
    if key is None or "/instanceTemplates/" not in key:
        raise ApiError(400, f"Invalid value for field '{where}': '{ref}'. The URL is malformed.")
    if key not in world.resources:
        raise not_found(key)
    return self_link(key)


def normalize(world, mig_key, mig):
    """Validates a would-be group and writes its template references as full URLs."""
    project = mig_key.split("/")[1]
    versions = mig.get("versions") or []
    if not versions and not mig.get("instanceTemplate"):
        raise ApiError(400, "Invalid value for field 'resource': at least one of 'instanceTemplate' or "
                       "'versions' must be set")
    if mig.get("instanceTemplate"):
        mig["instanceTemplate"] = template_link(world, mig["instanceTemplate"], project,
                                                "resource.instanceTemplate")
    for i, version in enumerate(versions):
        if not version.get("instanceTemplate"):
            raise ApiError(400, f"Required field 'resource.versions[{i}].instanceTemplate' not specified",
                           reason="required")
        version["instanceTemplate"] = template_link(world, version["instanceTemplate"], project,
                                                    f"resource.versions[{i}].instanceTemplate")
    if len(versions) > 1:
        open_ended = [v for v in versions if not v.get("targetSize")]
        if len(open_ended) != 1:
            raise ApiError(400, "Invalid value for field 'resource.versions': exactly one version must "
                           "leave targetSize unset")
        names = [v.get("name", "") for v in versions]
        if len(set(names)) != len(names):
            raise ApiError(400, "Invalid value for field 'resource.versions': version names must be unique")
    for i, version in enumerate(versions):
        target = version.get("targetSize") or {}
        if "fixed" in target and "percent" in target:
            raise ApiError(400, f"Invalid value for field 'resource.versions[{i}].targetSize': set fixed or "
                           "percent, not both")
        if not 0 <= int(target.get("percent", 0)) <= 100 or int(target.get("fixed", 0)) < 0:
            raise ApiError(400, f"Invalid value for field 'resource.versions[{i}].targetSize'")
    if not versions:
        mig["versions"] = [{"instanceTemplate": mig["instanceTemplate"]}]
    elif len(versions) == 1 or not mig.get("instanceTemplate"):
        mig["instanceTemplate"] = [v for v in versions if not v.get("targetSize")][-1]["instanceTemplate"] \
            if any(not v.get("targetSize") for v in versions) else versions[-1]["instanceTemplate"]
    if int(mig.get("targetSize", 0)) < 0:
        raise ApiError(400, "Invalid value for field 'resource.targetSize': must be >= 0")
    mig["targetSize"] = int(mig.get("targetSize", 0))


def desired(mig):
    """[(template URL, version name, count)] for the group's targetSize, the open-ended version last."""
    size = mig["targetSize"]
    out, rest = [], None
    for version in mig["versions"]:
        target = version.get("targetSize")
        if not target:
            rest = version
            continue
        count = int(target["fixed"]) if "fixed" in target else size * int(target.get("percent", 0)) // 100
        out.append([version["instanceTemplate"], version.get("name"), min(count, size)])
    taken = sum(c for _, _, c in out)
    if rest is not None:
        out.append([rest["instanceTemplate"], rest.get("name"), max(0, size - taken)])
    return out


def deficits(world, mig_key, mig):
    want = desired(mig)
    have = {}
    for record in members(world, mig_key):
        have[record["template"]] = have.get(record["template"], 0) + 1
    return [(t, n, c - have.get(t, 0)) for t, n, c in want]


def next_version(world, mig_key, mig):
    best = max(deficits(world, mig_key, mig), key=lambda d: d[2])
    return best[0], best[1]


def new_ip(world):
    prefix = [p for p in str(world.config.get("instanceIpPrefix", "10.128")).split(".") if p]
    n = world.next_ip
    world.next_ip += 1
    tail = []
    for _ in range(4 - len(prefix)):
        tail.insert(0, str(n % 254 + 1 if not tail else n % 256))
        n //= 254 if len(tail) == 1 else 256
    return ".".join(prefix + tail)


def create_instance(world, mig_key, mig, name=None, zone=None):
    project = mig_key.split("/")[1]
    zones = zones_of(mig_key, mig)
    if zone is None:
        count = {z: 0 for z in zones}
        for record in members(world, mig_key):
            count[record["zone"]] = count.get(record["zone"], 0) + 1
        zone = min(zones, key=lambda z: (count.get(z, 0), zones.index(z)))
    base = mig.get("baseInstanceName") or mig["name"]
    while name is None or f"projects/{project}/zones/{zone}/instances/{name}" in world.instances:
        name = f"{base}-{''.join(random.choices(string.ascii_lowercase + string.digits, k=4))}"
    template, version = next_version(world, mig_key, mig)
    key = f"projects/{project}/zones/{zone}/instances/{name}"
    world.instances[key] = {
        "key": key, "name": name, "zone": zone, "project": project, "id": world.new_id(),
        "template": template, "version": version, "mig": mig_key, "ip": new_ip(world), "created": now(),
        "status": "RUNNING",
    }
    world.health.pop(key, None)
    world.created += 1
    return world.instances[key]


def recreate(world, mig_key, mig, record):
    """Recreates an instance in place (same name and zone) on the version the group wants for it."""
    del world.instances[record["key"]]
    create_instance(world, mig_key, mig, name=record["name"], zone=record["zone"])


def reconcile(world, mig_key, mig):
    size = mig["targetSize"]
    templates = {v["instanceTemplate"] for v in mig["versions"]}
    while len(members(world, mig_key)) > size:
        current = members(world, mig_key)
        off = [r for r in current if r["template"] not in templates]
        victim = off[-1] if off else current[-1]
        del world.instances[victim["key"]]
    while len(members(world, mig_key)) < size:
        create_instance(world, mig_key, mig)
    if (mig.get("updatePolicy") or {}).get("type", "PROACTIVE") == "PROACTIVE":
        for _ in range(size):
            surplus = {t for t, _, d in deficits(world, mig_key, mig) if d < 0}
            if not any(d > 0 for _, _, d in deficits(world, mig_key, mig)):
                break
            movable = [r for r in members(world, mig_key) if r["template"] not in templates
                       or r["template"] in surplus]
            if not movable:
                break
            recreate(world, mig_key, mig, movable[-1])


def health_of(world, record):
    state = world.health.get(record["key"])
    if state:
        return state
    template_key = key_of(record["template"])
    return "UNHEALTHY" if template_key in world.failing_templates else "HEALTHY"


def view(world, mig_key, mig):
    """The group as `get` shows it: stored fields plus the computed output-only ones."""
    out = copy.deepcopy(mig)
    current = members(world, mig_key)
    actions = world.schema_props("InstanceGroupManagerActionsSummary")
    out["currentActions"] = {name: 0 for name in actions}
    out["currentActions"]["none"] = len(current)
    reached = all(d == 0 for _, _, d in deficits(world, mig_key, mig))
    out["status"] = {"isStable": True, "versionTarget": {"isReached": reached},
                     "stateful": {"hasStatefulConfig": False,
                                  "perInstanceConfigs": {"allEffective": True}},
                     "allInstancesConfig": {"effective": True}}
    for version, (_, _, count) in zip(out["versions"], desired(mig)):
        if version.get("targetSize"):
            version["targetSize"]["calculated"] = count
    return out


def managed_instance(world, mig, record):
    item = {
        "instance": self_link(record["key"]),
        "id": record["id"],
        "name": record["name"],
        "instanceStatus": record["status"],
        "currentAction": "NONE",
        "targetStatus": "RUNNING",
        "version": {"instanceTemplate": record["template"]},
    }
    if record.get("version"):
        item["version"]["name"] = record["version"]
    checks = [p.get("healthCheck") for p in mig.get("autoHealingPolicies") or [] if p.get("healthCheck")]
    if checks:
        item["instanceHealth"] = [{"healthCheck": checks[0], "detailedHealthState": health_of(world, record)}]
    return item


def instance_json(world, record):
    template = world.resources.get(key_of(record["template"]) or "", {})
    props = template.get("properties", {})
    project, zone = record["project"], record["zone"]
    machine = props.get("machineType", "e2-small").rstrip("/").split("/")[-1]
    out = {
        "kind": "compute#instance", "id": record["id"], "name": record["name"],
        "selfLink": self_link(record["key"]), "creationTimestamp": record["created"],
        "zone": self_link(f"projects/{project}/zones/{zone}"), "status": record["status"],
        "machineType": self_link(f"projects/{project}/zones/{zone}/machineTypes/{machine}"),
        "networkInterfaces": [{"kind": "compute#networkInterface", "name": "nic0", "networkIP": record["ip"]}],
        "metadata": {"kind": "compute#metadata", "items": [
            {"key": "instance-template", "value": "/".join(key_of(record["template"]).split("/")[2:])}]},
    }
    if record["mig"]:
        out["metadata"]["items"].append({"key": "created-by", "value": "/".join(
            igm_key_to_group(record["mig"]).replace("/instanceGroups/", "/instanceGroupManagers/")
            .split("/")[2:])})
    if props.get("labels"):
        out["labels"] = dict(props["labels"])
    return out


def named_members(world, mig_key, refs, skip_invalid):
    """The member records that `refs` (instance URLs) name; 400 for a non-member unless skipped."""
    project = mig_key.split("/")[1]
    found = []
    for i, ref in enumerate(refs or []):
        key = key_of(ref, project)
        record = world.instances.get(key or "")
        if record is None or record["mig"] != mig_key:
            if skip_invalid:
                continue
            raise ApiError(400, f"Invalid value for field 'request.instances[{i}]': '{ref}'. The instance is "
                           f"not a member of the group '{mig_key}'.")
        if record not in found:
            found.append(record)
    return found


def handlers(read, mutation, g_get, g_list):
    """{method id: handler} for both kinds of group."""

    def insert(world, method, key, params, body):
        name = body.get("name", "")
        if not NAME_RE.fullmatch(name):
            raise ApiError(400, f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex "
                           "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
        mig_key = f"{key}/{name}"
        if mig_key in world.resources:
            raise ApiError(409, f"The resource '{mig_key}' already exists", reason="alreadyExists")
        _, mig = world.insert(method, key, body)
        normalize(world, mig_key, mig)
        mig.setdefault("baseInstanceName", name)
        mig["instanceGroup"] = self_link(igm_key_to_group(mig_key))
        mig.setdefault("listManagedInstancesResults", "PAGELESS")
        zonal = scope_of(mig_key)[0] == "zone"
        zones = zones_of(mig_key, mig)
        mig["updatePolicy"] = {
            "type": "PROACTIVE", "minimalAction": "REPLACE", "replacementMethod": "SUBSTITUTE",
            "maxSurge": {"fixed": len(zones), "calculated": len(zones)},
            "maxUnavailable": {"fixed": len(zones), "calculated": len(zones)},
            **({} if zonal else {"instanceRedistributionType": "PROACTIVE"}),
            **(mig.get("updatePolicy") or {}),
        }
        if not zonal:
            project = mig_key.split("/")[1]
            mig.setdefault("distributionPolicy", {})
            mig["distributionPolicy"].setdefault("targetShape", "EVEN")
            mig["distributionPolicy"]["zones"] = [{"zone": self_link(f"projects/{project}/zones/{z}")}
                                                  for z in zones]

        def commit():
            world.resources[mig_key] = mig
            reconcile(world, mig_key, mig)
            return mig

        return mutation(mig_key, commit, mig)

    def get(world, method, key, params, body):
        return read(view(world, key, world.get(key)))

    def list_(world, method, key, params, body):
        items = [view(world, k, r) for k, r in world.resources.items() if k.rsplit("/", 1)[0] == key]
        return read(world.listing(method, key, params, items=items))

    def delete(world, method, key, params, body):
        mig = world.get(key)
        user = world.in_use_by(igm_key_to_group(key), ignore=(key,)) or world.in_use_by(key)
        if user is not None:
            raise ApiError(400, f"The instance_group resource '{igm_key_to_group(key)}' is already being "
                           f"used by '{user}'", reason="resourceInUseByAnotherResource")

        def commit():
            for record in members(world, key):
                del world.instances[record["key"]]
            return world.resources.pop(key, mig)

        return mutation(key, commit)

    def patch(world, method, key, params, body):
        stored = world.get(key)
        world.check_fingerprint(stored, body, method.request_ref)
        new = world.merged(stored, body, method.request_ref)
        if "versions" in body and "instanceTemplate" not in body:
            new.pop("instanceTemplate", None)
        normalize(world, key, new)
        return change(world, key, new)

    def change(world, key, new):
        def commit():
            world.resources[key] = new
            reconcile(world, key, new)
            return new

        return mutation(key, commit, new)

    def resize(world, method, key, params, body):
        key = key.rsplit("/", 1)[0]
        new = copy.deepcopy(world.get(key))
        new["targetSize"] = params["size"]
        return change(world, key, new)

    def set_template(world, method, key, params, body):
        key = key.rsplit("/", 1)[0]
        new = copy.deepcopy(world.get(key))
        link = template_link(world, body.get("instanceTemplate"), key.split("/")[1], "request.instanceTemplate")
        new["instanceTemplate"] = link
        new["versions"] = [{"instanceTemplate": link}]
        new["fingerprint"] = new_fingerprint()
        return change(world, key, new)

    def list_managed(world, method, key, params, body):
        key = key.rsplit("/", 1)[0]
        mig = world.get(key)
        items = [managed_instance(world, mig, r) for r in members(world, key)]
        page, token = paginate(items, params)
        out = {"managedInstances": page}
        if token:
            out["nextPageToken"] = token
        return read(out)

    def remove(abandon):
        def handler(world, method, key, params, body):
            key = key.rsplit("/", 1)[0]
            new = copy.deepcopy(world.get(key))
            found = named_members(world, key, body.get("instances"), body.get("skipInstancesOnValidationError"))

            def commit():
                for record in found:
                    if abandon:
                        record["mig"] = None
                    else:
                        world.instances.pop(record["key"], None)
                new["targetSize"] = max(0, new["targetSize"] - len(found))
                world.resources[key] = new
                reconcile(world, key, new)
                return new

            return mutation(key, commit)

        return handler

    def recreate_named(world, method, key, params, body):
        key = key.rsplit("/", 1)[0]
        mig = world.get(key)
        if method.verb == "applyUpdatesToInstances" and body.get("allInstances"):
            found = members(world, key)
        else:
            found = named_members(world, key, body.get("instances"), False)

        def commit():
            for record in found:
                recreate(world, key, mig, record)
            return mig

        return mutation(key, commit)

    out = {}
    for resource in ("instanceGroupManagers", "regionInstanceGroupManagers"):
        for verb, handler in {
            "insert": insert, "get": get, "list": list_, "delete": delete, "patch": patch, "resize": resize,
            "setInstanceTemplate": set_template, "listManagedInstances": list_managed,
            "deleteInstances": remove(False), "abandonInstances": remove(True),
            "recreateInstances": recreate_named, "applyUpdatesToInstances": recreate_named,
        }.items():
            out[f"compute.{resource}.{verb}"] = handler
    return out


def group_members(world, group_key):
    """(group key of a managed group, its member records) for an instance group URL's key, or None."""
    mig_key = group_key.replace("/instanceGroups/", "/instanceGroupManagers/")
    if mig_key in world.resources:
        return mig_key, members(world, mig_key)
    return None
