"""Shared by the integration tests: one line per check, the closing
'N passed, M failed' line that the test runner reads, and stopping a server."""
import signal
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


def stop_server(proc, timeout=30):
    """SIGTERM, then wait for the drain; returns the exit code (None if it had to be killed)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None
