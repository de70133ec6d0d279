"""The Compute Engine v1 discovery document: loading it, routing a request to one of its methods, and
validating the request's path, query and JSON body against it.

Everything here is driven by the document that google-api-python-client ships
(googleapiclient/discovery_cache/documents/compute.v1.json); nothing about Compute is written by hand.
"""

import base64
import binascii
import json
import os
import re
import urllib.parse

from .errors import ApiError

# Google accepts its system parameters with a `$` prefix too (`$alt`, `$fields`, `$prettyPrint`), which
# the generated Rust clients use. These values of `$alt` / `alt` mean a JSON response.
JSON_ALTS = ("json", "json;enum-encoding=int")
# System parameters Google documents (cloud.google.com/apis/docs/system-parameters) that the discovery
# document does not list: `$apiVersion`, the API version the generated Rust clients pin (a date).
EXTRA_SYSTEM_PARAMS = {"apiVersion": {"type": "string", "pattern": r"\d{4}-\d{2}-\d{2}"}}


def find_document(explicit=None):
    """The path of compute.v1.json: `explicit`, else $STELE_GCP_DISCOVERY, else inside googleapiclient."""
    if explicit:
        return explicit
    env = os.environ.get("STELE_GCP_DISCOVERY")
    if env:
        return env
    try:
        import importlib.util

        spec = importlib.util.find_spec("googleapiclient")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise SystemExit(
            "gcp fake: google-api-python-client is not installed in this interpreter, so the compute v1 "
            "discovery document cannot be found. Run scripts/gcp-venv.sh and start the fake with "
            ".venv-gcp/bin/python, or pass --discovery PATH."
        )
    return os.path.join(os.path.dirname(spec.origin), "discovery_cache", "documents", "compute.v1.json")


class Method:
    """One method of the document, with its route."""

    def __init__(self, resource, verb, spec, service_path):
        self.resource = resource  # e.g. regionInstanceGroupManagers
        self.verb = verb  # e.g. resize
        self.spec = spec
        self.id = spec["id"]
        self.http_method = spec["httpMethod"]
        self.path = spec["path"]
        self.params = spec.get("parameters", {})
        self.request_ref = (spec.get("request") or {}).get("$ref")
        self.response_ref = (spec.get("response") or {}).get("$ref")
        pattern, self.literal = compile_template("/" + service_path + self.path)
        self.regex = re.compile(pattern)


def compile_template(template):
    """A regex for a URI template (`{name}` is one segment, `{+name}` any), and its count of literal chars."""
    out, literal, pos = [], 0, 0
    for m in re.finditer(r"\{(\+?)([A-Za-z0-9_]+)\}", template):
        text = template[pos : m.start()]
        out.append(re.escape(text))
        literal += len(text)
        out.append(f"(?P<{m.group(2)}>{'.+' if m.group(1) else '[^/]+'})")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    literal += len(template) - pos
    return "^" + "".join(out) + "$", literal


class Discovery:
    def __init__(self, path):
        if not os.path.isfile(path):
            raise SystemExit(
                f"gcp fake: the compute v1 discovery document is missing: {path}\n"
                "Run scripts/gcp-venv.sh (scripts/test.sh does) to install google-api-python-client into "
                ".venv-gcp/."
            )
        with open(path, encoding="utf-8") as f:
            try:
                self.doc = json.load(f)
            except json.JSONDecodeError as e:
                raise SystemExit(f"gcp fake: {path} is not JSON: {e}") from e
        if self.doc.get("name") != "compute" or self.doc.get("version") != "v1":
            raise SystemExit(f"gcp fake: {path} is not the compute v1 discovery document")
        self.path = path
        self.schemas = self.doc["schemas"]
        self.system_params = {**EXTRA_SYSTEM_PARAMS, **self.doc.get("parameters", {})}
        self.service_path = self.doc["servicePath"]  # compute/v1/
        self.methods = []
        self.by_id = {}
        self._collect(self.doc.get("resources", {}))
        # Most literal text first, so that `images/family/{family}` wins over `images/{image}`.
        self.methods.sort(key=lambda m: -m.literal)

    def _collect(self, resources):
        for name, res in resources.items():
            for verb, spec in res.get("methods", {}).items():
                method = Method(name, verb, spec, self.service_path)
                self.methods.append(method)
                self.by_id[method.id] = method
            self._collect(res.get("resources", {}))

    def route(self, http_method, path):
        """(method, path parameters) for a request, or an ApiError 404 (unknown URL or HTTP method)."""
        for method in self.methods:
            m = method.regex.match(path)
            if m and method.http_method == http_method:
                params = {k: urllib.parse.unquote(v) for k, v in m.groupdict().items()}
                return method, params
        raise ApiError(
            404,
            f"The requested URL {path} (HTTP {http_method}) is not a method of the compute v1 API "
            "(it matches no path and HTTP method of the discovery document)",
            reason="notFound",
        )

    # ---- validation ----------------------------------------------------------------------------

    def check_params(self, method, path_params, query):
        """Checks path and query parameters; returns {name: value} with typed values (lists for repeated)."""
        values = {}
        for name, raw in path_params.items():
            spec = method.params.get(name)
            if spec is None:
                raise ApiError(400, f"path parameter {name!r} is not a parameter of {method.id}")
            values[name] = check_param(method, name, spec, raw)
        for name, raws in query.items():
            spec = method.params.get(name)
            if spec is not None and spec.get("location") == "query":
                if len(raws) > 1 and not spec.get("repeated"):
                    raise ApiError(400, f"query parameter {name!r} of {method.id} given {len(raws)} times")
                typed = [check_param(method, name, spec, raw) for raw in raws]
                values[name] = typed if spec.get("repeated") else typed[0]
                continue
            system = self.system_params.get(name[1:] if name.startswith("$") else name)
            if system is None:
                raise ApiError(
                    400,
                    f'Invalid JSON payload received. Unknown name "{name}": Cannot bind query parameter. '
                    f"Field '{name}' could not be found in request message ({method.id}).",
                )
            bare = name.lstrip("$")
            if bare == "apiVersion" and not re.fullmatch(system["pattern"], raws[-1]):
                raise ApiError(400, f"{name}={raws[-1]}: an API version is a date, YYYY-MM-DD")
            if bare == "alt" and raws[-1] not in JSON_ALTS:
                raise ApiError(400, f"{name}={raws[-1]}: the fake answers only JSON (alt=json)")
            if bare == "prettyPrint" and raws[-1] not in ("true", "false"):
                raise ApiError(400, f"Invalid boolean value for {name}: {raws[-1]!r}")
        for name, spec in method.params.items():
            if spec.get("required") and name not in values:
                raise ApiError(400, f"Required parameter '{name}' of {method.id} is missing", reason="required")
        return values

    def check_body(self, method, body_bytes):
        """The request body as JSON (None when the method takes none), validated against its schema."""
        text = body_bytes.decode("utf-8", errors="replace").strip() if body_bytes else ""
        if method.request_ref is None:
            if text not in ("", "{}"):
                raise ApiError(400, f"Invalid JSON payload received. {method.id} takes no request body.")
            return None
        if not text:
            raise ApiError(400, f"Required field 'resource' not specified: {method.id} takes a request body "
                           f"({method.request_ref})", reason="required")
        try:
            body = json.loads(text)
        except json.JSONDecodeError as e:
            raise ApiError(400, f"Invalid JSON payload received. {e}") from e
        self.check_value(body, {"$ref": method.request_ref}, "resource", method.id)
        return body

    def resolve(self, schema):
        while "$ref" in schema:
            schema = self.schemas[schema["$ref"]]
        return schema

    def check_value(self, value, schema, where, method_id):
        """Raises ApiError 400 when `value` does not fit `schema` (proto3 JSON rules, as Google parses)."""
        schema = self.resolve(schema)
        if value is None:
            return  # proto3 JSON: null is the field's default.
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            if not isinstance(value, dict):
                raise ApiError(400, f"Invalid value at '{where}': expected an object, got {json_kind(value)}")
            props = schema.get("properties")
            extra = schema.get("additionalProperties")
            for key, item in value.items():
                if props is not None and key in props:
                    self.check_value(item, props[key], f"{where}.{key}", method_id)
                elif extra is not None:
                    self.check_value(item, extra, f"{where}[{key!r}]", method_id)
                elif props is None:
                    continue  # A free-form object ("type": "object" without properties).
                else:
                    raise ApiError(
                        400,
                        f'Invalid JSON payload received. Unknown name "{key}" at \'{where}\': Cannot find field.',
                    )
            for key, prop in (props or {}).items():
                required = (prop.get("annotations") or {}).get("required") or []
                if method_id in required and value.get(key) in (None, ""):
                    raise ApiError(400, f"Required field '{where}.{key}' not specified", reason="required")
        elif kind == "array":
            if not isinstance(value, list):
                raise ApiError(400, f"Invalid value at '{where}': expected a list, got {json_kind(value)}")
            for i, item in enumerate(value):
                self.check_value(item, schema.get("items", {}), f"{where}[{i}]", method_id)
        elif kind == "string":
            check_string(value, schema, where)
        elif kind == "integer":
            check_integer(value, schema, where)
        elif kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ApiError(400, f"Invalid value at '{where}' ({schema.get('format')}): {json.dumps(value)}")
            if isinstance(value, str) and value not in ("NaN", "Infinity", "-Infinity"):
                try:
                    float(value)
                except ValueError as e:
                    raise ApiError(400, f"Invalid value at '{where}' (number): {json.dumps(value)}") from e
        elif kind == "boolean":
            if not isinstance(value, bool):
                raise ApiError(400, f"Invalid value at '{where}' (TYPE_BOOL): {json.dumps(value)}")
        elif kind == "any" or kind is None:
            return
        else:
            raise ApiError(500, f"the discovery document has a type {kind!r} the fake does not know ({where})")


def json_kind(value):
    return type(value).__name__.replace("dict", "object").replace("list", "array").replace("str", "string")


def check_string(value, schema, where):
    fmt = schema.get("format")
    if fmt in ("int64", "uint64"):
        check_integer(value, schema, where)
        return
    if not isinstance(value, str):
        raise ApiError(400, f"Invalid value at '{where}' (TYPE_STRING): {json.dumps(value)}")
    if "enum" in schema and value not in schema["enum"]:
        raise ApiError(400, f"Invalid value at '{where}' (enum): {json.dumps(value)}; "
                       f"expected one of {', '.join(schema['enum'])}")
    if fmt == "byte":
        try:
            base64.b64decode(value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4), validate=True)
        except (binascii.Error, ValueError) as e:
            raise ApiError(400, f"Invalid value at '{where}' (TYPE_BYTES): {json.dumps(value)}") from e


INT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}


def check_integer(value, schema, where):
    fmt = schema.get("format") or "int32"
    if isinstance(value, bool):
        raise ApiError(400, f"Invalid value at '{where}' ({fmt}): {json.dumps(value)}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
        value = int(value)  # proto3 JSON takes integers as numbers or decimal strings.
    if not isinstance(value, int):
        raise ApiError(400, f"Invalid value at '{where}' ({fmt}): {json.dumps(value)}")
    low, high = INT_RANGES.get(fmt, INT_RANGES["int64"])
    if not low <= value <= high:
        raise ApiError(400, f"Invalid value at '{where}' ({fmt}): {value} is out of range")


def check_param(method, name, spec, raw):
    kind = spec.get("type")
    where = f"parameter '{name}' of {method.id}"
    if kind == "integer" or spec.get("format") in ("int64", "uint64"):
        if not re.fullmatch(r"-?[0-9]+", raw):
            raise ApiError(400, f"Invalid value for {where}: {raw!r} is not an integer")
        value = int(raw)
        if "minimum" in spec and value < int(spec["minimum"]):
            raise ApiError(400, f"Invalid value for {where}: {value} is below the minimum {spec['minimum']}")
        if "maximum" in spec and value > int(spec["maximum"]):
            raise ApiError(400, f"Invalid value for {where}: {value} is above the maximum {spec['maximum']}")
        return value if kind == "integer" else raw
    if kind == "boolean":
        if raw not in ("true", "false"):
            raise ApiError(400, f"Invalid value for {where}: {raw!r} is not a boolean")
        return raw == "true"
    if kind == "number":
        try:
            return float(raw)
        except ValueError as e:
            raise ApiError(400, f"Invalid value for {where}: {raw!r} is not a number") from e
    if "enum" in spec and raw not in spec["enum"]:
        raise ApiError(400, f"Invalid value for {where}: {raw!r}; expected one of {', '.join(spec['enum'])}")
    if "pattern" in spec and spec.get("location") == "path" and not re.fullmatch(spec["pattern"], raw):
        raise ApiError(400, f"Invalid value for {where}: {raw!r} does not match {spec['pattern']}")
    return raw
