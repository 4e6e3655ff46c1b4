"""Admission control and shutdown, end to end, with the bundled model:
- a checkpoint that is a FIFO is refused at once (admin swap 422, --model at
  startup, franca-embed, franca-checkpoint) and SIGTERM then ends the server;
- the drain's deadline ends the process even while a forward still runs;
- the token budget (--max-inflight-tokens): concurrent large-resolution
  requests past it get 429 with Retry-After and a JSON error, the rest 200,
  a request over the whole budget 413, and the server is healthy afterwards;
- a request that overflows the inference queue is refused whole and at once
  (not after the queued work), one larger than the queue gets 413;
- the queued images of a client that went away are dropped, not computed.
Every time limit here is a bound on waiting for an answer, not a speed test."""
import base64
import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_server as ts  # noqa: E402  (helpers: start, conforms; paths)
from harness import Checks, stop_server  # noqa: E402

MODEL = os.path.join(ts.ROOT, "models", "franca_fmnist_small.safetensors")
TOKEN = "admission-token-0123"
check = Checks()


def png(side, seed):
    """A small noisy RGB PNG (about 1 KB at 16 x 16)."""
    rows, s = [], seed * 2654435761 % 2**32 or 1
    for _ in range(side):
        row = bytearray([0])
        for _ in range(side * 3):
            s = (s * 1103515245 + 12345) % 2**31
            row.append(s >> 23)
        rows.append(bytes(row))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


IMAGE = png(16, 1)
B64 = base64.b64encode(IMAGE).decode()


def request(port, method, path, body=b"", headers=None, timeout=60):
    """(status, headers, parsed body, seconds); status None when no answer came in time."""
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
    except (OSError, http.client.HTTPException):
        return None, {}, None, time.monotonic() - t0
    finally:
        c.close()
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = data
    return r.status, dict(r.getheaders()), parsed, time.monotonic() - t0


def features(port, resolution, timeout=120):
    return request(port, "POST", f"/v1/features?resolution={resolution}&crop=square", IMAGE,
                   {"Content-Type": "image/png"}, timeout)


def embeddings_body(n):
    return json.dumps({"input": [B64] * n}).encode()


def embeddings(port, n, timeout=60):
    return request(port, "POST", "/v1/embeddings", embeddings_body(n),
                   {"Content-Type": "application/json"}, timeout)


def metrics(port):
    st, _, text, _ = request(port, "GET", "/metrics", timeout=10)
    text = text.decode() if isinstance(text, bytes) else ""
    out = {}
    for ln in text.splitlines():
        if ln and not ln.startswith("#"):
            name, _, value = ln.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def short(body):
    return str(body)[:200]


def wait_for(cond, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def is_error(body, status):
    return isinstance(body, dict) and body.get("error", {}).get("code") == status


def in_background(fn, *args):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn(*args)))
    t.start()
    return t, out


def stop_within(server, seconds):
    """SIGTERM; (exit code or None, seconds taken, stderr)."""
    t0 = time.monotonic()
    rc = stop_server(server, timeout=seconds)
    dt = time.monotonic() - t0
    err = server.stderr.read() if rc is not None else ""
    return rc, dt, err


# ---- FIFO checkpoints ------------------------------------------------------

def fifo_checkpoints(tmp):
    models = os.path.join(tmp, "models")
    os.makedirs(models)
    fifo = os.path.join(models, "pipe.safetensors")
    os.mkfifo(fifo)
    token = os.path.join(tmp, "token")
    open(token, "w").write(TOKEN + "\n")
    drain = 2
    server, port = ts.start(["--model", "m=" + MODEL, "--models-dir", models, "--admin-token-file", token,
                             "--data", os.path.join(tmp, "data_fifo"), "--drain-seconds", str(drain)])
    st, _, body, dt = request(port, "POST", "/admin/models/m", b'{"checkpoint": "pipe.safetensors"}',
                              {"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    check(st == 422 and dt < 5 and ts.conforms("/admin/models/{name}", "POST", 422, body) and
          "regular file" in json.dumps(body), f"admin swap to a FIFO: {st} in {dt:.2f} s: {short(body)}")
    st, _, body, _ = embeddings(port, 1, timeout=30)
    check(st == 200, f"the model still serves after the refused swap: {st}")
    rc, dt, _ = stop_within(server, drain + 10)
    check(rc == 0 and dt < drain + 5, f"SIGTERM after the refused swap: exit {rc} in {dt:.1f} s "
          f"(drain limit {drain} s)")

    def refused(args, what):
        try:
            p = subprocess.run(args, capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            check(False, f"{what}: still waiting on the FIFO after 20 s")
            return
        check(p.returncode == 1 and "not a regular file" in p.stderr,
              f"{what}: exit {p.returncode}: {p.stderr.strip()[-160:]}")
    refused([ts.SERVER, "--port", "0", "--model", "m=" + fifo, "--data", os.path.join(tmp, "data_fifo2")],
            "franca-server --model FIFO")
    refused([ts.EMBED, "--model", fifo, ts.IMAGES[0], "--out", os.path.join(tmp, "out.safetensors")],
            "franca-embed --model FIFO")
    refused([ts.CKPT_TOOL, "info", fifo], "franca-checkpoint info FIFO")


# ---- The drain's deadline --------------------------------------------------

def drain_deadline(tmp):
    """A slow forward (three 896 x 896 images in one batch, on one thread:
    tens of seconds) still runs when the drain ends: the process must end
    DRAIN_GRACE_S (5 s) after the drain limit, saying so, instead of waiting
    for it."""
    drain, per = 1, 1 + 128 * 128
    server, port = ts.start(["--model", "m=" + MODEL, "--data", os.path.join(tmp, "data_drain"),
                             "--threads", "1", "--drain-seconds", str(drain), "--max-batch", "3",
                             "--max-delay-ms", "500"])
    clients = [in_background(features, port, 896, 60) for _ in range(3)]
    running = wait_for(lambda: metrics(port).get("franca_inflight_tokens", 0) == 3 * per and
                       metrics(port).get("franca_queue_depth", 1) == 0, 10)
    check(running, "three 896 x 896 images admitted, none left waiting in the queue")
    rc, dt, err = stop_within(server, drain + 5 + 15)
    codes = []
    for t, out in clients:
        t.join(timeout=30)
        codes.append(out.get("r", (None,))[0])
    check(rc == 1 and dt < drain + 5 + 3 and "drain deadline passed" in err,
          f"SIGTERM during a long forward: exit {rc} after {dt:.1f} s (drain {drain} s + 5 s): "
          f"{err.strip().splitlines()[-1:] if err else ''}")
    check(all(c in (503, None) for c in codes), f"the requests in flight were answered 503 (or cut): {codes}")


# ---- The token budget ------------------------------------------------------

def token_budget(tmp):
    """336 x 336 at patch 7: 1 + 48 x 48 = 2305 tokens per image; a budget of
    5000 admits two at once. The batching delay keeps the admitted ones in
    flight while the others arrive."""
    budget, per = 5000, 2305
    server, port = ts.start(["--model", "m=" + MODEL, "--data", os.path.join(tmp, "data_budget"),
                             "--max-inflight-tokens", str(budget), "--max-delay-ms", "1500"])
    try:
        threads = [in_background(features, port, 336) for _ in range(6)]
        results = []
        for t, out in threads:
            t.join(timeout=120)
            results.append(out.get("r", (None, {}, None, 0)))
        codes = sorted(r[0] for r in results if r[0] is not None)
        check(codes == [200, 200, 429, 429, 429, 429], f"6 concurrent requests of {per} tokens, budget "
              f"{budget}: {codes}")
        busy = [r for r in results if r[0] == 429]
        check(busy and all(r[1].get("Retry-After", "").isdigit() and is_error(r[2], 429) and
                           ts.conforms("/v1/features", "POST", 429, r[2]) and "tokens" in r[2]["error"]["message"]
                           for r in busy), f"429s carry Retry-After and a JSON error: "
              f"{busy[0][1].get('Retry-After') if busy else None} {short(busy[0][2]) if busy else None}")
        ok = [r for r in results if r[0] == 200]
        check(ok and all(len(r[2]["data"]) == 1 and r[2]["grid"]["height"] == 48 for r in ok),
              "the admitted requests answered in full")
        st, _, body, _ = features(port, 504)
        check(st == 413 and ts.conforms("/v1/features", "POST", 413, body) and
              "--max-inflight-tokens" in body["error"]["message"],
              f"one request over the whole budget (5185 tokens): {st} {short(body)}")
        st, _, _, _ = request(port, "GET", "/healthz")
        st2, _, body, _ = features(port, 336)
        # A request gives its tokens back when it is freed, just after its answer
        # went out: the client may read the answer a moment before that.
        wait_for(lambda: metrics(port).get("franca_inflight_tokens") == 0, 10)
        m = metrics(port)
        check(st == 200 and st2 == 200 and m.get("franca_inflight_tokens") == 0 and
              0 < m.get("franca_inflight_tokens_peak", 0) <= budget and
              m.get("franca_inflight_tokens_limit") == budget and
              m.get('franca_admission_rejected_total{reason="tokens"}') == 4 and
              m.get('franca_admission_rejected_total{reason="too_large"}') == 1,
              f"healthy afterwards, every token given back: healthz {st}, request {st2}, "
              f"in flight {m.get('franca_inflight_tokens')}, peak {m.get('franca_inflight_tokens_peak')}")
        st, _, body, _ = request(port, "GET", "/v1/models")
        check(st == 200 and body["limits"].get("max_inflight_tokens") == budget and
              ts.conforms("/v1/models", "GET", 200, body), "/v1/models lists max_inflight_tokens")
    finally:
        rc, _, _ = stop_within(server, 40)
        check(rc == 0, f"budget server: SIGTERM exit {rc}")


# ---- The queue: all or nothing, and clients that went away -------------------

def queue_admission(tmp):
    delay = 4.0
    server, port = ts.start(["--model", "m=" + MODEL, "--data", os.path.join(tmp, "data_queue"),
                             "--max-queue", "4", "--max-delay-ms", str(int(delay * 1000))])
    try:
        # 3 images wait for their batch to fill; 2 more do not fit beside them.
        a, out_a = in_background(embeddings, port, 3)
        check(wait_for(lambda: metrics(port).get("franca_queue_depth") == 3, 10), "3 images queued")
        st, hdrs, body, dt = embeddings(port, 2)
        check(st == 429 and dt < delay / 2 and hdrs.get("Retry-After", "").isdigit() and
              ts.conforms("/v1/embeddings", "POST", 429, body),
              f"2 images beside 3 of 4: {st} after {dt:.2f} s (the queued batch runs after {delay} s)")
        check(metrics(port).get("franca_queue_depth") == 3, "nothing of the refused request was queued")
        st, _, body, dt = embeddings(port, 5)
        check(st == 413 and dt < delay / 2 and ts.conforms("/v1/embeddings", "POST", 413, body),
              f"5 images, queue of 4: {st} {short(body)}")
        a.join(timeout=60)
        check(out_a.get("r", (None,))[0] == 200, f"the queued request: {out_a.get('r', (None,))[0]}")

        # A client that sends 2 images and leaves; another's image joins the batch.
        before = metrics(port)
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        body = embeddings_body(2)
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        check(wait_for(lambda: metrics(port).get("franca_queue_depth") == 2, 5), "the leaving client's 2 images queued")
        s.close()
        st, _, body, _ = embeddings(port, 1)
        after = metrics(port)
        dropped = after.get("franca_batch_items_dropped_total", 0) - before.get("franca_batch_items_dropped_total", 0)
        ran = after.get("franca_batch_size_sum", 0) - before.get("franca_batch_size_sum", 0)
        check(st == 200 and dropped == 2 and ran == 1,
              f"the gone client's images were dropped: dropped {dropped}, images run {ran}, other client {st}")
        m = metrics(port)
        st, _, _, _ = request(port, "GET", "/healthz")
        check(st == 200 and m.get("franca_queue_depth") == 0 and m.get("franca_inflight_tokens") == 0,
              "healthy afterwards: empty queue, no tokens in flight")
    finally:
        rc, _, _ = stop_within(server, 40)
        check(rc == 0, f"queue server: SIGTERM exit {rc}")


def main():
    tmp = tempfile.mkdtemp(prefix="admission_it_")
    for part in (fifo_checkpoints, queue_admission, token_budget, drain_deadline):
        try:
            part(tmp)
        except Exception as e:  # one broken part must not hide the others' results
            check(False, f"{part.__name__}: {type(e).__name__}: {e}")
    subprocess.run(["rm", "-rf", tmp])
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
