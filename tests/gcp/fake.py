#!/usr/bin/env python3
"""A loopback fake of the Google Compute Engine v1 REST API, for the `gcp` provider tests.

    .venv-gcp/bin/python tests/gcp/fake.py [--port N] [--discovery PATH] [--allow-anonymous]

Listens on 127.0.0.1 (port 0, the default, lets the kernel choose) and prints
`gcp fake listening on http://127.0.0.1:PORT` on stdout once it serves. It loads the compute v1 discovery
document that google-api-python-client ships (scripts/gcp-venv.sh installs it into .venv-gcp/) and exits
loudly when it is missing.

Every request under /compute/v1/ must be a method of that document: its path and HTTP method (else 404),
its path and query parameters (required ones present, types, enums, patterns) and its JSON body (the
request schema: unknown fields, types, fields the document marks required) are checked, and anything wrong
is answered 400 in Google's error shape. `$alt=json` (also `json;enum-encoding=int`), `alt=json`,
`prettyPrint` and the other system parameters are accepted. Any `Authorization: Bearer ...` is accepted
and logged; a request without credentials is answered 401, as Google does (unless --allow-anonymous or
config requireAuth false).

Methods served (the rest of the document is answered 501 UNIMPLEMENTED in Google's error shape):
  generic (stored as JSON; kind, id, name, selfLink, creationTimestamp, region/zone, fingerprint filled
  from the schema; fingerprints checked on patch/update; delete refused while another resource refers):
    insert, get, list, delete, patch, update of every collection, e.g. instanceTemplates,
    regionInstanceTemplates, images, healthChecks, regionHealthChecks, backendServices,
    regionBackendServices, urlMaps, regionUrlMaps
  images.getFromFamily; instances.get and list (instances of managed groups)
  instanceGroupManagers.* and regionInstanceGroupManagers.*: insert, get, list, delete, patch, resize,
    setInstanceTemplate, listManagedInstances, deleteInstances, abandonInstances, recreateInstances,
    applyUpdatesToInstances
  backendServices.getHealth, regionBackendServices.getHealth
  globalOperations, regionOperations, zoneOperations: get, list, delete, wait

Long-running operations: every mutating call answers an Operation (compute#operation) scoped like the
call; it is PENDING, then RUNNING, then DONE over successive `get` polls (config operationPolls, default
2 polls to DONE); `wait` returns it DONE. The change itself is applied when the call is accepted. A
repeated requestId returns the first call's operation without applying anything again.

Control API (not Google's; JSON in and out):
  GET  /_fake/                   {"discovery": path, "revision": ...}
  POST /_fake/reset              forget everything (config back to defaults)
  POST /_fake/config             {"operationPolls": N, "instanceIpPrefix": "127.77", "requireAuth": bool}
  POST /_fake/images             {"project", "name", "status": READY|PENDING|FAILED, "labels": {}, "family"}
  POST /_fake/health             {"instance": name or URL, "state": HEALTHY|UNHEALTHY|null (clears)}
  POST /_fake/failing-template   {"template": name or URL, "failing": bool}: its instances report UNHEALTHY
  POST /_fake/fail-next          {"method": "compute.x.y", "code": 400, "reason", "message", "sync": bool}:
                                 the next such call fails: its operation ends DONE with that error (or, with
                                 sync, the call itself is answered with it); nothing is applied
  GET  /_fake/calls              {"calls": [{"method", "httpMethod", "path", "status", "client"}]} every API
                                 call; `client` is its x-goog-api-client header (the SDK's, empty for a test's
                                 raw calls)
  POST /_fake/calls/clear        forget the calls so far (a test's own set-up is not the provider's)
  GET  /_fake/instances          {"instances": [...], "created": N} every fake instance with its health, and
                                 how many instances were ever created
"""

import argparse
import json
import os
import sys
import threading
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gcpfake import api, control  # noqa: E402
from gcpfake.discovery import Discovery, find_document  # noqa: E402
from gcpfake.errors import ApiError, error_body  # noqa: E402
from gcpfake.store import World  # noqa: E402

UNAUTHENTICATED = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or "
    "other valid authentication credential."
)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; with Nagle's algorithm the body waits for the client's
    # delayed ACK (40 ms per call on Linux), which would show as the fake's latency in every figure.
    disable_nagle_algorithm = True
    server_version = "stele-gcp-fake"
    world = None
    lock = threading.Lock()

    def log_message(self, fmt, *args):  # One line per call is written by `answer` instead.
        pass

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_PATCH(self):
        self.handle_any("PATCH")

    def do_DELETE(self):
        self.handle_any("DELETE")

    def handle_any(self, http_method):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = self.read_chunked()
        else:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
        parsed = urllib.parse.urlsplit(self.path)
        path = parsed.path
        query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        if path.startswith("/_fake/") or path == "/_fake":
            with self.lock:
                try:
                    status, out = control.serve(self.world, http_method, path, body)
                except ApiError as e:
                    status, out = e.code, e.body()
            self.answer(status, out, "control", http_method, path)
            return
        method_id = None
        auth = self.headers.get("Authorization", "")
        with self.lock:
            try:
                has_token = auth.lower().startswith("bearer ") or any(
                    k.lstrip("$") in ("access_token", "oauth_token", "key") for k in query)
                if self.world.config.get("requireAuth") and not has_token:
                    raise ApiError(401, UNAUTHENTICATED, reason="required")
                method, path_params = self.world.discovery.route(http_method, path)
                method_id = method.id
                params = self.world.discovery.check_params(method, path_params, query)
                request = self.world.discovery.check_body(method, body)
                status, out = api.serve(self.world, method, params, request)
            except ApiError as e:
                status, out = e.code, e.body()
            except Exception as e:  # noqa: BLE001 - a fake's bug must show, in Google's shape.
                traceback.print_exc(file=sys.stderr)
                status, out = 500, error_body(500, f"gcp fake internal error: {e!r}", "backendError")
            self.world.calls.append({"method": method_id, "httpMethod": http_method, "path": path,
                                     "status": status, "client": self.headers.get("x-goog-api-client", "")})
        token = auth.split(" ", 1)[1][:12] + "..." if " " in auth else "-"
        self.answer(status, out, method_id or "?", http_method, path, token)

    def read_chunked(self):
        body = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline().strip():
                    pass  # Trailers up to the empty line.
                return body
            body += self.rfile.read(size)
            self.rfile.readline()

    def answer(self, status, out, what, http_method, path, token="-"):
        data = json.dumps(out, indent=1).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        print(f"{http_method} {path} -> {status} {what} token={token}", file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--discovery", help="compute.v1.json (default: the one google-api-python-client ships)")
    parser.add_argument("--allow-anonymous", action="store_true", help="accept requests without credentials")
    args = parser.parse_args()
    discovery = Discovery(find_document(args.discovery))
    world = World(discovery)
    world.defaults_require_auth = not args.allow_anonymous
    world.config["requireAuth"] = world.defaults_require_auth
    Handler.world = world
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(f"gcp fake: {len(discovery.methods)} methods from {discovery.path} (revision "
          f"{discovery.doc.get('revision')})", file=sys.stderr, flush=True)
    print(f"gcp fake listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
