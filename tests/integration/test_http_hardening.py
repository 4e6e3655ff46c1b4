"""franca-server's HTTP layer against hostile or broken clients, over raw
sockets on 127.0.0.1:

- slow heads: more slow-drip connections than --max-connections keep
  arriving, yet a normal client is served within the head deadline, and every
  slow connection is closed by the server at about --header-timeout;
- --max-connections-per-ip caps one address without locking out another;
- a head that is slow but within the deadline is served; an idle keep-alive
  connection is closed after the deadline;
- every refusal is one well-framed JSON error (414, 431, 505, 400 for a bad
  Content-Length or a missing Host, 413), followed by the server closing;
- a body over --max-body-mb sent anyway by http.client gets the 413 JSON,
  not a broken pipe.
Every loop is bounded in count and time."""
import http.client
import json
import os
import re
import resource
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.environ.get("FRANCA_SOURCE_ROOT") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("FRANCA_BUILD_ROOT") or os.path.join(ROOT, "build")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Checks, stop_server  # noqa: E402

SERVER = os.path.join(BUILD, "server", "franca-server")
CKPT_TOOL = os.path.join(BUILD, "engine", "franca-checkpoint")
check = Checks()


def start(tmp, name, args):
    """A server on port 0; its stderr goes to a file (a full pipe would block it)."""
    log = open(os.path.join(tmp, name + ".log"), "w")
    p = subprocess.Popen([SERVER, "--port", "0", "--model", "tiny=" + os.path.join(tmp, "a.safetensors"),
                          "--data", os.path.join(tmp, "data-" + name), *args],
                         stdout=subprocess.PIPE, stderr=log, text=True)
    line = p.stdout.readline()
    if not line.startswith("listening on http://"):
        p.kill()
        raise RuntimeError(f"server did not start: {line!r}; see {log.name}")
    return p, int(line.rsplit(":", 1)[1])


def get_healthz(port, timeout=10.0, source="127.0.0.1"):
    """(status, seconds) of GET /healthz on a fresh connection; status None on failure."""
    t0 = time.monotonic()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
        c.request("GET", "/healthz")
        r = c.getresponse()
        r.read()
        c.close()
        return r.status, time.monotonic() - t0
    except (OSError, http.client.HTTPException):
        return None, time.monotonic() - t0


def read_until_close(s, limit_s):
    """Everything the server sends until it closes; (data, closed)."""
    s.settimeout(0.2)
    data, end = b"", time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            d = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return data, True
        if not d:
            return data, True
        data += d
    return data, False


def wait_closed(s, limit_s):
    """Seconds until the server closed s (EOF or reset), None if it stayed open."""
    t0 = time.monotonic()
    data, closed = read_until_close(s, limit_s)
    return time.monotonic() - t0 if closed else None


# ---- slow heads --------------------------------------------------------------

DRIP_HEAD = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Drip: "


class Dripper:
    """Slow-drip connections: a head that never ends, one byte every `every`
    seconds; notes when the server closes each."""

    def __init__(self, port, every=0.3):
        self.port, self.every = port, every
        self.open = {}     # fd -> [sock, t_open, next_drip]
        self.life = []     # (t_open, seconds until the server closed it)
        self.answered = 0  # got bytes back (a head never completes, so: never)
        self.failed = 0    # could not connect
        self.peak = 0
        self.poll = select.poll()

    def connect(self, n):
        for _ in range(n):
            s = socket.socket()
            s.settimeout(3)
            try:
                s.connect(("127.0.0.1", self.port))
                s.sendall(DRIP_HEAD)
            except OSError:
                self.failed += 1
                s.close()
                continue
            s.setblocking(False)
            now = time.monotonic()
            self.open[s.fileno()] = [s, now, now + self.every]
            self.poll.register(s.fileno(), select.POLLIN)
        self.peak = max(self.peak, len(self.open))

    def _closed(self, fd, now):
        s, t_open, _ = self.open.pop(fd)
        self.poll.unregister(fd)
        s.close()
        self.life.append((t_open, now - t_open))

    def step(self, wait_s):
        for fd, ev in self.poll.poll(int(wait_s * 1000)):
            if fd not in self.open:
                continue
            try:
                d = self.open[fd][0].recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                d = b""
            if d:
                self.answered += 1
            self._closed(fd, time.monotonic())
        now = time.monotonic()
        for fd, entry in list(self.open.items()):
            if now >= entry[2]:
                entry[2] = now + self.every
                try:
                    entry[0].send(b"a")
                except BlockingIOError:
                    pass
                except OSError:
                    self._closed(fd, now)

    def close_all(self):
        for fd in list(self.open):
            self.poll.unregister(fd)
            self.open.pop(fd)[0].close()


def raise_fd_limit(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < cap:
        resource.setrlimit(resource.RLIMIT_NOFILE, (cap, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def slow_heads(tmp):
    """Waves of slow-drip connections, more than --max-connections at each
    wave and 1,100 in all (scaled down only when file descriptors are short);
    a normal client probes meanwhile. Without head deadlines the first wave
    holds every slot for good and no probe is ever served."""
    H, M, wave, period = 1, 128, 150, 1.5
    fds = raise_fd_limit(4096)
    total = 1100 if fds >= 1500 else max(2 * wave, fds - 400)
    if total < 1100:
        print(f"     RLIMIT_NOFILE {fds}: {total} slow connections instead of 1100")
    server, port = start(tmp, "slow", ["--max-connections", str(M), "--http-threads", "2",
                                       "--header-timeout", str(H)])
    d = Dripper(port)
    probes, stop = [], threading.Event()

    def prober():
        time.sleep(0.5)
        for _ in range(60):  # at most one per 0.7 s, until the flood ends
            if stop.is_set():
                return
            probes.append(get_healthz(port, timeout=H + 8))
            time.sleep(0.7)

    t = threading.Thread(target=prober)
    try:
        t0 = time.monotonic()
        t.start()
        opened, end = 0, t0 + 60
        while time.monotonic() < end and (opened < total or d.open):
            if opened < total and time.monotonic() >= t0 + (opened // wave) * period:
                n = min(wave, total - opened)
                d.connect(n)
                opened += n
            if opened >= total and not stop.is_set():
                stop.set()
            d.step(0.02)
        stop.set()
        t.join()
        left = len(d.open)
        d.close_all()
    finally:
        rc = stop_server(server)
    check(opened == total and d.failed == 0, f"{opened} slow connections opened in waves of {wave} "
          f"({d.failed} could not connect)")
    check(d.peak > M, f"more slow connections at once ({d.peak}) than --max-connections {M}")
    ok = [p for p in probes if p[0] == 200]
    worst = max((p[1] for p in probes), default=-1)
    check(len(probes) >= 5 and len(ok) == len(probes) and worst <= H + 2.5,
          f"normal client during the flood: {len(ok)}/{len(probes)} probes answered 200, "
          f"slowest {worst:.2f} s (deadline {H} s)")
    check(left == 0 and d.answered == 0, f"every slow connection closed by the server, none answered "
          f"({left} still open, {d.answered} answered)")
    first = [x[1] for x in sorted(d.life)[:M // 2]]  # the first wave's earliest: accepted at once
    lo, hi = min(first, default=-1), max(first, default=-1)
    check(len(first) == M // 2 and lo >= 0.8 * H and hi <= H + 1.0,
          f"first wave cut at the deadline: {lo:.2f}..{hi:.2f} s (--header-timeout {H})")
    lives = [x[1] for x in d.life]
    check(len(lives) == total and min(lives) >= 0.8 * H and max(lives) <= H + 3.0,
          f"every slow connection lived {min(lives, default=-1):.2f}..{max(lives, default=-1):.2f} s: "
          "none refused at once (past the limit they wait to be accepted), none long past the deadline")
    check(rc == 0, f"server after the flood: SIGTERM exit {rc}")


def per_ip_cap(tmp):
    """--max-connections-per-ip: one address cannot take more; another still can."""
    server, port = start(tmp, "perip", ["--max-connections-per-ip", "4", "--header-timeout", "5",
                                        "--http-threads", "2"])
    held = []
    try:
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", port), timeout=3)
            s.sendall(DRIP_HEAD)
            held.append(s)
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", port), timeout=3)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        data, closed = read_until_close(extra, 2)
        extra.close()
        check(closed and data == b"", f"5th connection from 127.0.0.1 closed at once without an answer ({data[:40]!r})")
        st, _ = get_healthz(port, timeout=3, source="127.0.0.2")
        check(st == 200, f"another address is still served: {st}")
        check(all(wait_closed(s, 0.1) is None for s in held), "the 4 capped connections are kept until their deadline")
    finally:
        for s in held:
            s.close()
        check(stop_server(server) == 0, "per-IP server: SIGTERM exit 0")


def deadline_details(port, H):
    """A head dripped within the deadline is served; an idle keep-alive
    connection is closed about H seconds after its last answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    req = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    step = (H * 0.6) / len(req)
    for i in range(len(req)):
        s.sendall(req[i:i + 1])
        time.sleep(step)
    s.settimeout(5)
    head = s.recv(4096)
    check(head.startswith(b"HTTP/1.1 200"), f"head dripped over {H * 0.6:.1f} s (deadline {H} s): {head[:20]!r}")
    w = wait_closed(s, H + 3)
    check(w is not None and H * 0.8 <= w <= H + 1.5, f"idle keep-alive connection closed after the head deadline: {w}")
    s.close()


# ---- error bodies --------------------------------------------------------------

def one_response(data):
    """Parses exactly one response; (status, headers, body, trailing bytes) or None."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.1 "):
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "-1"))
    if n < 0 or len(rest) < n:
        return None
    return int(lines[0].split()[1]), headers, rest[:n], rest[n:]


def status_lines(data):
    return len(re.findall(rb"(?:^|\r\n)HTTP/1\.[01] \d{3} ", data))


def error_bodies(port):
    big = b"h" * 40000
    cases = [
        ("request target over 8 KiB", b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
        ("request target over libmicrohttpd's buffer", b"GET /" + b"a" * 400000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
        ("head over 32 KiB", b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + big + b"\r\n\r\n", 431),
        ("head over libmicrohttpd's buffer", b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + big * 10 + b"\r\n\r\n", 431),
        ("HTTP/2.0", b"GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        ("HTTP/9.9", b"GET /healthz HTTP/9.9\r\nHost: t\r\n\r\n", 505),
        ("HTTP/1.2", b"GET /healthz HTTP/1.2\r\nHost: t\r\n\r\n", 505),
        ("Content-Length -1", b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400),
        ("Content-Length 1x", b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\nx", 400),
        ("Content-Length over 2^64", b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\n"
         b"Content-Length: 99999999999999999999999\r\n\r\n", 413),
        ("Content-Length over --max-body-mb", b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\n"
         b"Content-Length: 99999999999\r\n\r\n", 413),
        ("HTTP/1.1 without Host", b"GET /healthz HTTP/1.1\r\n\r\n", 400),
        ("no HTTP version", b"GET /healthz\r\n\r\n", 400),
        ("malformed chunk", b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"zz\r\nab\r\n0\r\n\r\n", 400),
    ]
    for what, raw, want in cases:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            s.sendall(raw)
        except OSError:
            pass  # the server may answer and close before a huge head is all sent
        data, closed = read_until_close(s, 5)
        s.close()
        r = one_response(data)
        try:
            body = json.loads(r[2]) if r else None
        except ValueError:
            body = None
        err = body.get("error") if isinstance(body, dict) else None
        check(r is not None and r[0] == want and r[1].get("content-type") == "application/json"
              and isinstance(err, dict) and err.get("code") == want and isinstance(err.get("message"), str)
              and isinstance(err.get("type"), str) and r[3] == b"" and status_lines(data) == 1
              and closed,
              f"{what}: one JSON {want}, then closed (got {data[:100]!r}{'...' if len(data) > 100 else ''}, "
              f"closed {closed})")
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
    data, _ = read_until_close(s, 5)
    s.close()
    check(data.startswith(b"HTTP/1.1 200"), f"HTTP/1.0 without Host: still served ({data[:20]!r})")


def oversize_body(port, limit_mb):
    """http.client sends a 65 MB body against a smaller limit and reads the 413."""
    size = 65 * 1000 * 1000
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("POST", "/v1/embeddings", body=bytes(size), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        body = json.loads(r.read())
        c.close()
        got = (r.status, body.get("error", {}).get("code"))
    except (OSError, http.client.HTTPException, ValueError) as e:
        got = repr(e)
    check(got == (413, 413), f"{size} byte body sent by http.client against --max-body-mb {limit_mb}: {got}")
    check(get_healthz(port)[0] == 200, "still serving after the drained body")


def main():
    tmp = tempfile.mkdtemp(prefix="http_hardening_")
    subprocess.run([CKPT_TOOL, "init", "--arch", "vit_tiny_test", "--seed", "1", "--out",
                    os.path.join(tmp, "a.safetensors")], check=True, capture_output=True)
    H = 2
    server, port = start(tmp, "main", ["--max-body-mb", "40", "--header-timeout", str(H), "--http-threads", "2"])
    try:
        error_bodies(port)
        oversize_body(port, 40)
        deadline_details(port, H)
    finally:
        check(stop_server(server) == 0, "SIGTERM exit 0")
    per_ip_cap(tmp)
    slow_heads(tmp)
    if not check.failed:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"     server logs kept in {tmp}")
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
