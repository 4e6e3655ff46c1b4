"""README examples, run as written: every shell command in the README's HTTP API
section and its franca-embed section, against a server started as ./run.sh starts
it (the bundled model, --models-dir, --data with the admin token), from a folder
laid out as run.sh's. Each command must exit 0 with curl made to fail on an HTTP
error (--fail-with-body is added where the example does not have it), so an
example that no longer fits the bundled model or the API fails here. Also checks
that the server keeps --data owner-only (0700 folder, 0600 index files)."""
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile

ROOT = os.environ.get("FRANCA_SOURCE_ROOT") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("FRANCA_BUILD_ROOT") or os.path.join(ROOT, "build")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Checks, stop_server  # noqa: E402

SERVER = os.path.join(BUILD, "server", "franca-server")
BUNDLED = "franca_fmnist_small.safetensors"
SECTIONS = ("## The HTTP API", "## franca-embed")

check = Checks()


def complete(text):
    """True when text is a whole shell command (balanced quotes, no trailing | or \\)."""
    if re.search(r"(\\|\|)\s*$", text):
        return False
    return subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True).returncode == 0


def commands(readme):
    """The README's example commands, in order: indented lines of the chosen
    sections, comments dropped, continuation lines joined."""
    out, section = [], None
    for line in readme.splitlines():
        if line.startswith("## "):
            section = line.strip() if line.strip() in SECTIONS else None
            continue
        if section and line.startswith("    ") and not line.strip().startswith("#"):
            out.append(line[4:])
    cmds, cur = [], ""
    for line in out:
        cur = f"{cur}\n{line}" if cur else line
        if complete(cur):
            cmds.append(cur)
            cur = ""
    check(cur == "", f"every example command is complete (left over: {cur[:60]!r})")
    return cmds


def adapt(cmd, port, job_id):
    """Points an example at the test server; makes curl fail on HTTP errors."""
    cmd = cmd.replace("localhost:8080", f"127.0.0.1:{port}")
    cmd = re.sub(r"\bcurl -s\b(?! --fail-with-body)", "curl -s --fail-with-body", cmd)
    cmd = cmd.replace("build/", BUILD + "/").replace("clients/", os.path.join(ROOT, "clients") + "/")
    return cmd.replace("JOB_ID", job_id or "JOB_ID")


def main():
    tmp = tempfile.mkdtemp(prefix="readme_it_")
    os.makedirs(os.path.join(tmp, "models"))
    shutil.copy(os.path.join(ROOT, "models", BUNDLED), os.path.join(tmp, "models", BUNDLED))
    data = os.path.join(tmp, "data")  # created by the server, as on a first run
    token = os.path.join(tmp, "admin.token")
    with open(token, "w") as f:
        f.write("readme-token-0123456789\n")
    log = open(os.path.join(tmp, "server.log"), "w")
    server = subprocess.Popen([SERVER, "--model", "default=models/" + BUNDLED, "--models-dir", "models",
                               "--data", "data", "--admin-token-file", token, "--port", "0"],
                              cwd=tmp, stdout=subprocess.PIPE, stderr=log, text=True)
    line = server.stdout.readline()
    if not check(line.startswith("listening on http://"), f"server started: {line.strip()!r}"):
        server.kill()
        return check.summary()
    port = int(line.rsplit(":", 1)[1])
    os.rename(token, os.path.join(data, "admin.token"))  # where run.sh keeps it (read once at start)
    try:
        cmds = commands(open(os.path.join(ROOT, "README.md")).read())
        check(len(cmds) >= 20, f"{len(cmds)} example commands found")
        job_id = None
        # The Python client's server; `python3` is Debian's, as on a fresh machine.
        env = dict(os.environ, FRANCA_URL=f"http://127.0.0.1:{port}",
                   PATH=os.path.dirname(sys.executable) + ":" + os.environ.get("PATH", ""))
        for cmd in cmds:
            r = subprocess.run(["bash", "-c", "set -o pipefail\n" + adapt(cmd, port, job_id)], cwd=tmp,
                               capture_output=True, text=True, timeout=300, env=env)
            first = cmd.splitlines()[0][:90]
            if not check(r.returncode == 0, f"exit 0: {first}"):
                print(f"     rc {r.returncode}; stdout {r.stdout[:300]!r}; stderr {r.stderr[:300]!r}")
            m = re.search(r'"job":\{"id":"([0-9a-f]+)"', r.stdout)
            job_id = m.group(1) if m else job_id
        check(os.path.getsize(os.path.join(tmp, "chelsea.safetensors")) > 1000, "safetensors example wrote its file")
        check(job_id is not None, "the reembed example answered a job id")
        mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
        check(mode(data) == 0o700, f"--data created owner-only: {mode(data):o}")
        for name in ("index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm"):
            p = os.path.join(data, name)
            check(os.path.exists(p) and mode(p) == 0o600, f"{name} owner-only: {mode(p) if os.path.exists(p) else 0:o}")
    finally:
        rc = stop_server(server)
        check(rc == 0, f"SIGTERM: exit 0 (rc {rc})")
        log.close()
        if check.failed:
            print(open(os.path.join(tmp, "server.log")).read()[-2000:])
    shutil.rmtree(tmp, ignore_errors=True)
    return check.summary()


if __name__ == "__main__":
    sys.exit(main())
