"""Shared by the integration tests: one line per check, the closing
'N passed, M failed' line that the test runner reads, one HTTP request,
stopping a server, and the status a server gives to an announced oversize body."""
import http.client
import json
import signal
import socket
import subprocess


class Checks:
    def __init__(self):
        self.passed = self.failed = 0

    def __call__(self, cond, what):
        """Records one check; returns cond."""
        if cond:
            self.passed += 1
            print(f"ok   {what}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL {what}", flush=True)
        return cond

    def add(self, passed, failed):
        """Adds counts from another runner (e.g. schemathesis' test cases)."""
        self.passed += passed
        self.failed += failed

    def summary(self):
        """Prints the closing line; returns the exit code."""
        print(f"{self.passed} passed, {self.failed} failed")
        return 1 if self.failed else 0


def request(port, method, path, body=b"", headers=None):
    """(status, headers, parsed JSON or raw bytes) of one request on a new connection."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    try:
        return r.status, dict(r.getheaders()), json.loads(data)
    except ValueError:
        return r.status, dict(r.getheaders()), data


def stop_server(proc, timeout=30):
    """SIGTERM, then wait for the drain; returns the exit code (None if it had to be killed)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None


def oversize_status(port, path, length):
    """Announces a body of `length` bytes on POST path, sends none, reads the status."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {length}\r\n\r\n".encode())
    line = s.makefile("rb").readline().decode()
    s.close()
    return int(line.split()[1]) if line.startswith("HTTP/1.1 ") else None
