"""Authentication of franca-server end to end (issue 13), against a real server
on port 0 started with --api-key-file and --admin-token-file:

  - every /v1 operation of schema/openapi.json (read from the schema, path
    parameters filled with dummy values, so a new route cannot be forgotten)
    answers 401 with WWW-Authenticate: Bearer without a key or with a
    malformed header, 403 with a wrong key, and neither with the right key;
    the schema declares the bearer scheme on each of them, and both errors
    validate against the operation's documented answers;
  - /healthz, /readyz, /metrics and /openapi.json stay open;
  - with the right key the data routes work (models, embeddings, features,
    a collection's life, jobs), also through clients/python's api_key;
  - the key is checked at the head, on the decoded path: before any body is
    read, on /v1 paths that no route has, and on escaped spellings of /v1;
  - the scheme is case-insensitive and may be followed by several spaces
    (admin and data routes), on raw sockets;
  - NUL bytes in the Authorization header (raw socket) never let a wrong or
    empty credential through;
  - the admin token does not open /v1 and an API key does not open /admin;
  - startup fails clearly on an empty key list, a short key, a missing file;
    without --api-key-file the data routes are open;
  - the official openai Python client (from PyPI, pinned, in a virtual
    environment under the build directory) gets embeddings with the right
    api_key (it asks for encoding_format "base64" by default: the values must
    equal the server's float answer) and raises PermissionDeniedError with a
    wrong one, AuthenticationError with a non-bearer header. When pip cannot reach
    PyPI, the same request the client sends is made with urllib instead, and
    the output says which path was taken."""
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import urllib.request

import numpy as np
from jsonschema import Draft202012Validator

ROOT = os.environ.get("FRANCA_SOURCE_ROOT") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("FRANCA_BUILD_ROOT") or os.path.join(ROOT, "build")
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from franca_client import FrancaClient, FrancaError  # noqa: E402
from harness import Checks, request, stop_server  # noqa: E402

SERVER = os.path.join(BUILD, "server", "franca-server")
CKPT_TOOL = os.path.join(BUILD, "engine", "franca-checkpoint")
IMAGE = "/usr/lib/python3/dist-packages/skimage/data/chelsea.png"
SPEC = json.load(open(os.path.join(ROOT, "schema", "openapi.json")))
OPENAI = "openai==3.63.0"
VENV = os.path.join(BUILD, "venv-openai")

KEY = "franca-key-0123456789abcdef"
KEY2 = "second-key-ABCDEFGH"
ADMIN = "admin-token-0123456789"
# The page under /ui is open: it holds nothing, and calls /v1 with the key typed into it.
OPEN_ROUTES = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/ui", "/ui/", "/ui/app.js", "/ui/style.css")

check = Checks()


# ---------------------------------------------------------------- helpers

def start(args, expect_ok=True):
    """The server on port 0; (process, port), or (process, None) when it exited."""
    p = subprocess.Popen([SERVER, "--port", "0", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line.startswith("listening on http://"):
        if expect_ok:
            p.kill()
            raise RuntimeError(f"server did not start: {line!r} {p.stderr.read()}")
        return p, None
    return p, int(line.rsplit(":", 1)[1])


def call(port, method, path, auth=None, body=None, headers=None):
    """(status, headers, parsed JSON or raw bytes) of one request."""
    hdrs = dict(headers or {})
    if auth is not None:
        hdrs["Authorization"] = auth
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    return request(port, method, path, body, hdrs)


def raw_status(port, method, path, auth_bytes):
    """Status and JSON body of a request whose Authorization header is sent byte
    for byte (NUL bytes, odd spacing) on a plain socket."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n".encode()
              + b"Authorization: " + auth_bytes + b"\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def documented(template, method, status, body):
    """True when (status, body) is one of the operation's documented answers."""
    resp = SPEC["paths"][template][method]["responses"].get(str(status))
    if resp is None:
        print(f"     {status} is not documented for {method.upper()} {template}")
        return False
    if "$ref" in resp:
        resp = SPEC["components"]["responses"][resp["$ref"].split("/")[-1]]
    schema = resp["content"]["application/json"]["schema"]
    errors = list(Draft202012Validator(dict(schema, components=SPEC["components"])).iter_errors(body))
    for e in errors[:3]:
        print(f"     schema: {e.message[:200]}")
    return not errors


def operations():
    """(template, method, concrete path) of every operation in the schema."""
    for template, item in SPEC["paths"].items():
        path = template.replace("{name}", "auth-dummy").replace("{id}", "auth-dummy-id")
        for method in item:
            if method != "parameters":
                yield template, method, path


def error_is(body, status, type_):
    e = body.get("error") if isinstance(body, dict) else None
    return isinstance(e, dict) and e.get("code") == status and e.get("type") == type_ \
        and isinstance(e.get("message"), str)


def png_b64():
    return base64.b64encode(open(IMAGE, "rb").read()).decode()


# ---------------------------------------------------------------- checks

def schema_declares_auth():
    schemes = SPEC["components"]["securitySchemes"]
    check(schemes.get("bearer", {}).get("scheme") == "bearer" and schemes["bearer"].get("type") == "http",
          "openapi: components.securitySchemes.bearer is HTTP bearer")
    for template, method, _ in operations():
        sec = SPEC["paths"][template][method].get("security")
        if template.startswith("/v1/"):
            check(sec == [{"bearer": []}], f"openapi: {method.upper()} {template} needs the bearer API key")
        elif template.startswith("/admin/"):
            check(sec == [{"adminToken": []}], f"openapi: {method.upper()} {template} needs the admin token")
        else:
            check(sec is None and template in OPEN_ROUTES, f"openapi: {method.upper()} {template} is open")


def refused_at_the_head(port):
    """The key is checked once the head is in, on the decoded path: before any
    body is read (a client that announces a large body and sends none gets its
    401/403 at once), on /v1 paths no route or schema entry has, and on escaped
    spellings of /v1."""
    for auth, want in ((b"", 401), (b"Authorization: Bearer wrong-key-0123456789\r\n", 403)):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 50000000\r\n" + auth + b"\r\n")
        try:
            line = s.makefile("rb").readline().decode(errors="replace")
        except socket.timeout:
            line = "(no answer in 10 s)"
        s.close()
        check(line.startswith(f"HTTP/1.1 {want} "), f"{want} before a 50 MB body is sent: {line.strip()!r}")
    for path in ("/v1/no-such-route", "/v1", "/%761/models", "/v1/models%2Fdefault"):
        st, _, body = call(port, "GET", path)
        check(st == 401, f"GET {path} without a key: 401 (got {st})")


def every_v1_route(port):
    """401 / 403 / accepted on every /v1 operation listed in the schema."""
    n = 0
    for template, method, path in operations():
        if not template.startswith("/v1/"):
            continue
        n += 1
        op = f"{method.upper()} {path}"
        body = {} if method in ("post", "put", "patch") else None
        st, hdrs, resp = call(port, method.upper(), path, body=body)
        check(st == 401 and hdrs.get("WWW-Authenticate") == "Bearer" and error_is(resp, 401, "authentication_error")
              and documented(template, method, st, resp), f"{op} without a key: 401 + WWW-Authenticate (got {st})")
        st, hdrs, resp = call(port, method.upper(), path, "Basic " + base64.b64encode(b"u:" + KEY.encode()).decode(),
                              body=body)
        check(st == 401 and hdrs.get("WWW-Authenticate") == "Bearer", f"{op} with Basic credentials: 401 (got {st})")
        st, hdrs, resp = call(port, method.upper(), path, "Bearer wrong-key-0123456789abcdef", body=body)
        check(st == 403 and error_is(resp, 403, "permission_error") and documented(template, method, st, resp),
              f"{op} with a wrong key: 403 (got {st})")
        st, _, resp = call(port, method.upper(), path, f"Bearer {KEY}", body=body)
        check(st not in (401, 403) and st < 500, f"{op} with the key: past authentication ({st})")
        st, _, _ = call(port, method.upper(), path, f"Bearer {ADMIN}", body=body)
        check(st == 403, f"{op} with the admin token: 403 (got {st})")
    check(n >= 10, f"the schema lists {n} /v1 operations")
    for path in OPEN_ROUTES:
        st, _, _ = call(port, "GET", path)
        want = 308 if path == "/ui" else 200  # /ui redirects to /ui/
        check(st == want, f"GET {path} without a key: {want} (got {st})")


def working_with_key(port):
    """The data routes do their work with the right key (either key of the file)."""
    auth = f"Bearer {KEY}"
    st, _, r = call(port, "GET", "/v1/models", auth)
    check(st == 200 and r["data"][0]["id"] == "tiny", f"GET /v1/models: 200 ({st})")
    st, _, r = call(port, "POST", "/v1/embeddings", f"Bearer {KEY2}", {"input": [png_b64()], "dimensions": 16})
    check(st == 200 and len(r["data"][0]["embedding"]) == 16, f"POST /v1/embeddings with the second key: 200 ({st})")
    st, _, r = call(port, "POST", "/v1/features", auth, {"images": [png_b64()], "widths": [16]})
    check(st == 200, f"POST /v1/features: 200 ({st})")
    st, _, r = call(port, "POST", "/v1/collections", auth, {"name": "authc", "width": 4, "metric": "l2"})
    check(st == 201, f"POST /v1/collections: 201 ({st})")
    st, _, r = call(port, "POST", "/v1/collections/authc/items", auth,
                    {"items": [{"id": "a", "vector": [1, 0, 0, 0]}, {"id": "b", "vector": [0, 1, 0, 0]}]})
    check(st == 200 and r.get("ids") == ["a", "b"], f"insert: 200 ({st} {r})")
    st, _, r = call(port, "POST", "/v1/collections/authc/search", auth, {"vector": [1, 0, 0, 0], "k": 1})
    check(st == 200 and r["results"][0]["id"] == "a", f"search: 200 ({st})")
    st, _, _ = call(port, "DELETE", "/v1/collections/authc/items/b", auth)
    check(st == 200, f"DELETE an item: 200 ({st})")
    st, _, _ = call(port, "DELETE", "/v1/collections/authc/items/a")
    check(st == 401, f"DELETE an item without a key: 401 ({st})")
    st, _, r = call(port, "GET", "/v1/collections/authc/items/a", auth)
    check(st == 200 and r["id"] == "a", f"the item survived the refused DELETE ({st})")
    st, _, r = call(port, "GET", "/v1/jobs", auth)
    check(st == 200, f"GET /v1/jobs: 200 ({st})")
    st, _, _ = call(port, "DELETE", "/v1/collections/authc", auth)
    check(st == 200, f"DELETE the collection: 200 ({st})")


def python_client(port):
    c = FrancaClient(f"http://127.0.0.1:{port}", api_key=KEY, token=ADMIN)
    check([m["id"] for m in c.models()] == ["tiny"], "franca_client api_key: models()")
    check(c.embed([IMAGE], width=16).shape == (1, 16), "franca_client api_key: embed()")
    check(c.swap("tiny", "tiny.safetensors")["id"] == "tiny", "franca_client: swap() sends the admin token to /admin")
    for key, status in ((None, 401), ("wrong-key-0123456789", 403)):
        try:
            FrancaClient(f"http://127.0.0.1:{port}", api_key=key).models()
            check(False, f"franca_client api_key={key}: refused")
        except FrancaError as e:
            check(e.status == status, f"franca_client api_key={key}: {status} (got {e.status})")


def scheme_spelling(port):
    """RFC 7235: the scheme is case-insensitive, then one or more spaces."""
    for spelled in (b"bearer", b"BEARER", b"BeArEr"):
        for spaces in (b" ", b"   "):
            v = spelled + spaces
            st, _ = raw_status(port, "GET", "/v1/models", v + KEY.encode())
            check(st == 200, f"/v1: {v!r}KEY accepted ({st})")
            st, body = raw_status(port, "DELETE", "/admin/models/absent", v + ADMIN.encode())
            check(st == 404 and error_is(body, 404, "not_found"), f"admin: {v!r}TOKEN accepted ({st})")
    for bad in (b"Bearer", b"Bearer ", b"BearerX " + KEY.encode(), b"Bearer\t" + KEY.encode(), b"Token " + KEY.encode()):
        st, _ = raw_status(port, "GET", "/v1/models", bad)
        check(st == 401, f"/v1: {bad[:12]!r}... malformed: 401 ({st})")


def nul_bytes(port):
    """A NUL byte never lets a wrong or empty credential through. (What follows
    a NUL inside a header value is dropped by libmicrohttpd 0.9.75 itself,
    which measures values with strlen: 'Bearer KEY\\0junk' reaches the server
    as 'Bearer KEY'; see server/auth.h.)"""
    cases = ((b"Bearer \x00" + KEY.encode(), (401,)), (b"Bearer \x00" + ADMIN.encode(), (401,)),
             (b"Bearer " + KEY[:5].encode() + b"\x00" + KEY[5:].encode(), (400, 403)),
             (b"Bearer wrong\x00" + KEY.encode(), (400, 403)))
    for auth, want in cases:
        st, _ = raw_status(port, "GET", "/v1/models", auth)
        check(st in want, f"/v1 with {auth[:16]!r}...: {want} (got {st})")
        st, _ = raw_status(port, "DELETE", "/admin/models/absent", auth.replace(KEY.encode(), ADMIN.encode()))
        check(st in want, f"admin with a NUL in the token: {want} (got {st})")
    st, _ = raw_status(port, "DELETE", "/admin/models/absent", b"Bearer " + ADMIN.encode() + b"\x00junk")
    print(f"     note: admin 'Bearer TOKEN\\0junk' answers {st} (libmicrohttpd drops the bytes after the NUL)")


def startup_errors(tmp, ckpt):
    for name, text, want in (("empty", "# nothing but a comment\n\n   \n", "no API key in the file"),
                             ("short", "long-enough-key\nshort\n", "line 2: a key must be at least 8 characters"),
                             ("spaces", "a key with spaces\n", "line 1: a key is printable ASCII without spaces")):
        path = os.path.join(tmp, name + ".keys")
        open(path, "w").write(text)
        p, port = start(["--model", "tiny=" + ckpt, "--api-key-file", path, "--data", os.path.join(tmp, "d-" + name)],
                        expect_ok=False)
        err = p.stderr.read()
        rc = p.wait(timeout=30)
        check(port is None and rc == 1 and f"{path}: {want}" in err, f"--api-key-file with {name} keys: exit 1, "
              f"'{want}' (rc {rc}, {err.strip()!r})")
    missing = os.path.join(tmp, "missing.keys")
    p, port = start(["--model", "tiny=" + ckpt, "--api-key-file", missing], expect_ok=False)
    err = p.stderr.read()
    check(port is None and p.wait(timeout=30) == 1 and missing in err and "No such file" in err,
          f"--api-key-file missing: exit 1 ({err.strip()!r})")


def open_without_flag(tmp, ckpt):
    p, port = start(["--model", "tiny=" + ckpt, "--data", os.path.join(tmp, "open")])
    try:
        st, _, _ = call(port, "GET", "/v1/models")
        check(st == 200, f"without --api-key-file GET /v1/models needs no key ({st})")
        st, _, _ = call(port, "GET", "/v1/models", "Bearer anything-at-all")
        check(st == 200, f"without --api-key-file a bearer credential is ignored on /v1 ({st})")
    finally:
        check(stop_server(p) == 0, "server without --api-key-file: SIGTERM exit 0")


# ---------------------------------------------------------------- the openai client

OPENAI_SCRIPT = r"""
import base64, json, sys
import openai
port, key = sys.argv[1], sys.argv[2]
image_b64 = base64.b64encode(open(sys.argv[3], "rb").read()).decode()
base = f"http://127.0.0.1:{port}/v1"
out = {"version": openai.__version__}
c = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
r = c.embeddings.create(model="tiny", input=[image_b64])
out["default"] = r.data[0].embedding
out["model"] = r.model
r = c.embeddings.create(model="tiny", input=image_b64, dimensions=16, encoding_format="float")
out["float16"] = r.data[0].embedding
# "malformed": the client refuses an empty api_key, so its header is replaced.
for name, k, hdrs in (("wrong", "wrong-key-0123456789", None), ("malformed", key, {"Authorization": "Basic " + key})):
    try:
        openai.OpenAI(base_url=base, api_key=k, max_retries=0, default_headers=hdrs).embeddings.create(
            model="tiny", input=[image_b64])
        out[name] = "no error"
    except openai.APIStatusError as e:
        out[name] = [type(e).__name__, e.status_code]
print(json.dumps(out))
"""


def ensure_openai():
    """The venv's python with the pinned openai client, or None when pip cannot get it."""
    py = os.path.join(VENV, "bin", "python")
    marker = os.path.join(VENV, ".franca-installed")
    if os.path.exists(marker) and open(marker).read().strip() == OPENAI and os.access(py, os.X_OK):
        return py
    shutil.rmtree(VENV, ignore_errors=True)
    print(f"creating {VENV} and installing {OPENAI} from PyPI", flush=True)
    r = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", VENV], capture_output=True, text=True)
    if r.returncode == 0:
        r = subprocess.run([py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                            "--timeout", "60", "--retries", "2", OPENAI], capture_output=True, text=True)
    if r.returncode != 0:
        print((r.stdout + r.stderr)[-3000:])
        shutil.rmtree(VENV, ignore_errors=True)
        return None
    open(marker, "w").write(OPENAI + "\n")
    return py


def float_answer(port, dims=None):
    body = {"model": "tiny", "input": [png_b64()], "encoding_format": "float"}
    if dims:
        body["dimensions"] = dims
    st, _, r = call(port, "POST", "/v1/embeddings", f"Bearer {KEY}", body)
    return np.asarray(r["data"][0]["embedding"], dtype=np.float32) if st == 200 else None


def openai_client(port):
    want = float_answer(port)
    want16 = float_answer(port, 16)
    py = ensure_openai()
    if py is None:
        print("PATH TAKEN: fallback (pip could not install openai): the openai client's request made with urllib")
        return openai_fallback(port, want)
    print(f"PATH TAKEN: the real openai client ({OPENAI}) from {VENV}")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    for v in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        env.pop(v, None)
    r = subprocess.run([py, "-c", OPENAI_SCRIPT, str(port), KEY, IMAGE], capture_output=True, text=True,
                       env=env, timeout=300)
    if not check(r.returncode == 0, "openai client script ran"):
        print(r.stdout[-2000:] + r.stderr[-4000:])
        return
    out = json.loads(r.stdout.strip().splitlines()[-1])
    got = np.asarray(out["default"], dtype=np.float32)
    check(want is not None and got.shape == want.shape and np.array_equal(got, want),
          f"openai {out['version']}: embeddings.create (encoding_format base64 by default) equals the float answer "
          f"({got.shape})")
    check(out["model"] == "tiny", "openai: the answer names the model")
    got16 = np.asarray(out["float16"], dtype=np.float32)
    check(want16 is not None and got16.shape == (16,) and np.allclose(got16, want16, atol=1e-6),
          "openai: dimensions=16, encoding_format=float")
    check(out["wrong"] == ["PermissionDeniedError", 403], f"openai: a wrong api_key raises PermissionDeniedError ({out['wrong']})")
    check(out["malformed"] == ["AuthenticationError", 401],
          f"openai: a Basic Authorization header raises AuthenticationError ({out['malformed']})")


def openai_fallback(port, want):
    """The request openai.OpenAI(api_key=KEY).embeddings.create(model=..., input=[...])
    sends (seen on the wire with openai 3.63): lower-case header names, base64."""
    headers = {"authorization": f"Bearer {KEY}", "accept": "application/json", "content-type": "application/json",
               "user-agent": "OpenAI/Python 3.63.0", "x-stainless-lang": "python"}
    body = json.dumps({"model": "tiny", "input": [png_b64()], "encoding_format": "base64"}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/embeddings", data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        resp = json.loads(r.read())
    raw = base64.b64decode(resp["data"][0]["embedding"])
    got = np.asarray(struct.unpack(f"<{len(raw) // 4}f", raw), dtype=np.float32)
    check(want is not None and np.array_equal(got, want), "fallback: base64 little-endian float32 equals the float answer")
    for key, status in (("wrong-key-0123456789", 403), ("", 401)):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/embeddings", data=body,
                                     headers=dict(headers, authorization=f"Bearer {key}"), method="POST")
        try:
            urllib.request.urlopen(req, timeout=60)
            check(False, f"fallback: api_key {key!r} refused")
        except urllib.error.HTTPError as e:
            check(e.code == status, f"fallback: api_key {key!r}: {status} (got {e.code})")


def main():
    tmp = tempfile.mkdtemp(prefix="auth_it_")
    models = os.path.join(tmp, "models")
    os.makedirs(models)
    ckpt = os.path.join(models, "tiny.safetensors")
    subprocess.run([CKPT_TOOL, "init", "--arch", "vit_tiny_test", "--seed", "1", "--out", ckpt],
                   check=True, capture_output=True)
    keys = os.path.join(tmp, "api.keys")
    open(keys, "w").write(f"# API keys of the test\n\n  {KEY}  \n{KEY2}\r\n")
    token = os.path.join(tmp, "admin.token")
    open(token, "w").write(ADMIN + "\n")

    schema_declares_auth()
    startup_errors(tmp, ckpt)
    open_without_flag(tmp, ckpt)
    server, port = start(["--model", "tiny=" + ckpt, "--models-dir", models, "--admin-token-file", token,
                          "--api-key-file", keys, "--data", os.path.join(tmp, "data"), "--max-delay-ms", "5"])
    try:
        every_v1_route(port)
        refused_at_the_head(port)
        working_with_key(port)
        python_client(port)
        scheme_spelling(port)
        nul_bytes(port)
        openai_client(port)
    finally:
        rc = stop_server(server)
        check(rc == 0, f"SIGTERM: exit 0 (rc {rc})")
    if not check.failed:
        shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
