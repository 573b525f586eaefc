"""schemathesis hooks for `make fuzz` and the bounded run in `make test`: what the local
emulator (cargo lambda watch) cannot carry, sent as API Gateway would hand it over.

- Header values outside visible ASCII: the emulator answers its own 500 before any function
  runs. API Gateway passes them to the function, which answers 400; that path is tested through
  the real binary in tests/tests/e2e/idempotency.rs. They are not generated here.
- Bodies that are not UTF-8: API Gateway hands them to the function base64-encoded; the
  emulator does the same only for a binary content type, and answers its own 500 to such bytes
  labelled as text. They are sent as application/octet-stream.

- Now and then (a few runs in a hundred) the emulator answers a request its own bare 500
  (`text/plain`, a problem document `https://httpstatuses.com/500`) that no function answered
  nor logged: the functions answer JSON only. A GET answered so is sent once more and judged
  by the second answer; any other 500 is judged as it is.

And what would change the stack under the tests that run after the fuzzer: the stateful phase
learns the servers' names and secrets from `GET /api/servers`, and would drain (`PATCH` or
`POST .../drain`), resize or remove them, or register them again at other addresses (a 503:
nothing listens there). Those
are valid requests doing what they should (tests/tests/e2e/servers.rs covers them); here an
existing server's name in the path becomes a name no server has, and a secret of the stack in a
body becomes one that does not exist.
"""
import schemathesis
from schemathesis.core.transport import Response


@schemathesis.hook
def filter_headers(ctx, headers):
    return headers is None or all(str(v).isascii() for v in headers.values())


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    keep_the_servers(case)
    headers = case.headers or {}
    for name in [n for n, v in headers.items() if not str(v).isascii()]:
        # The coverage phase does not go through filter_headers: keep the case invalid, in
        # ASCII (a space is not allowed in a key either).
        headers[name] = "not visible ascii"
    body = case.body
    if isinstance(body, (bytes, bytearray)):
        try:
            bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            case.media_type = "application/octet-stream"


# The stack's servers and the prefix of its secrets (scripts/stack.sh).
STACK_SERVERS = {"primary", "secondary"}
STACK_SECRETS = "dbtools/"


def keep_the_servers(case):
    if not case.path.startswith("/api/servers"):
        return
    params = case.path_parameters or {}
    if params.get("name") in STACK_SERVERS and case.method.upper() in ("PATCH", "DELETE", "POST"):
        params["name"] = "fuzz-" + params["name"]
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("secret_arn"), str):
        if body["secret_arn"].startswith(STACK_SECRETS):
            body["secret_arn"] = "fuzz/" + body["secret_arn"]


def emulator_500(response):
    kind = ",".join(response.headers.get("content-type", []))
    return (
        response.status_code == 500
        and kind.startswith("text/plain")
        and b"httpstatuses.com/500" in response.content
    )


@schemathesis.hook
def after_call(ctx, case, response):
    if case.method.upper() != "GET" or not emulator_500(response):
        return
    import requests

    with requests.Session() as session:
        again = session.send(response.request, timeout=20)
    fresh = Response.from_requests(again, verify=response.verify)
    print(f"the emulator's own 500 to GET {case.path}; sent again: {fresh.status_code}")
    for slot in Response.__slots__:
        setattr(response, slot, getattr(fresh, slot))
