"""``nearsight serve --processes N`` end to end: real server processes on one port (``server/workers.py``).
Searches are answered by whichever process takes the connection; an image job is asked for on any of them and
answered by the one that owns it; a process killed with SIGKILL is replaced; SIGTERM stops them all. Each under
waitress and under granian (``--http granian``: granian on the public port, waitress on the private ones)."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner

from nearsight.server.cli import main


class Served:
    def __init__(self, collection: str, *args: str, processes: int = 2):
        env = {k: v for k, v in os.environ.items() if k != "NEARSIGHT_TOKEN"}
        self.proc = subprocess.Popen([sys.executable, "-m", "nearsight.server.cli", "serve", "-c", collection,
                                      "--port", "0", "--processes", str(processes), "--threads", "2",
                                      "--heavy-workers", "1", "--job-queue", "40", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        self.lines = []
        deadline = time.time() + 90
        while time.time() < deadline and not any("http://" in line for line in self.lines):
            if select.select([self.proc.stdout], [], [], 1.0)[0]:
                line = self.proc.stdout.readline()
                if not line:
                    break
                self.lines.append(line)
        match = re.search(r"http://127\.0\.0\.1:\d+/", "".join(self.lines))
        if not match:
            self.stop()
            raise RuntimeError(f"serve --processes did not start: {self.lines}")
        self.url = match.group(0)

    def children(self) -> set[int]:
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return {int(pid) for pid in f.read().split()}

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """One request on a new connection (so any process may take it)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def _until(condition, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


NO_GRANIAN = pytest.mark.skipif(importlib.util.find_spec("granian") is None, reason="granian (extra [fast]) missing")
HTTP = pytest.mark.parametrize("http", ["waitress", pytest.param("granian", marks=NO_GRANIAN)])


@HTTP
def test_searches_and_jobs_are_answered_whichever_process_takes_the_connection(coll_dir, http):
    served = Served(coll_dir, "--http", http)
    try:
        assert f"(2 processes, {http}" in served.lines[-1] and len(served.children()) == 2
        for i in range(16):
            status, answer = served.call("POST", "api/search", {"id": i % 8, "k": 3})
            assert status == 200 and answer["results"][0]["id"] == i % 8
        # job ids name the process that took the job; keep submitting until both have some, four at once (one
        # at a time, the process that took the last connection may win every accept)
        jobs = []
        with ThreadPoolExecutor(4) as pool:
            while {job.split(".")[0] for job in jobs} != {"p0", "p1"}:
                assert len(jobs) < 40, f"one process took every job: {jobs}"
                for status, answer in pool.map(lambda _: served.call("POST", "api/recolor?async=1",
                                                                     {"id": 1, "like": 2}), range(4)):
                    assert status == 202, answer
                    jobs.append(answer["id"])
        for job in jobs:        # each poll on a new connection: the owner answers through either process
            _until(lambda: served.call("GET", f"api/jobs/{job}")[1]["state"] == "done")
            status, result = served.call("GET", f"api/jobs/{job}/result")
            assert status == 200 and result["reference_ids"] == [2]
        for job in ("p1.no-such-job", "p0.no-such-job", "p7.x", "nodot"):
            status, answer = served.call("GET", f"api/jobs/{job}")
            assert status == 404 and answer["error"]["code"] == "unknown_job"
    finally:
        assert served.stop() == 0
    output = served.proc.stdout.read()
    assert "leaked" not in output and "Traceback" not in output, output  # a stop after image jobs is quiet


@HTTP
def test_a_killed_process_is_replaced_and_sigterm_stops_every_one(coll_dir, http):
    served = Served(coll_dir, "--http", http)
    before = served.children()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    _until(lambda: len(served.children()) == 2 and victim not in served.children())
    for i in range(8):
        status, answer = served.call("POST", "api/search", {"id": i, "k": 1})
        assert status == 200 and answer["results"][0]["id"] == i
    children = served.children()
    started = time.monotonic()
    assert served.stop() == 0 and time.monotonic() - started < 10
    output = served.proc.stdout.read()
    assert re.search(rf"server process \d \(pid {victim}\) died \(signal 9\); starting it again", output), output
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_a_server_that_cannot_start_says_why_in_one_line(coll_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nearsight.server.cli", "serve", "-c", str(tmp_path / "none"),
                           "--port", "0", "--processes", "2"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: server process 0 failed to start:"), proc
    assert len(proc.stderr.strip().splitlines()) == 1 and not proc.stdout
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = CliRunner().invoke(main, ["serve", "-c", coll_dir, "--port", str(s.getsockname()[1]), "--processes", "2"])
    assert r.exit_code == 1 and r.output.strip().startswith("error: cannot listen on 127.0.0.1:"), r.output


@NO_GRANIAN
def test_granian_in_one_process_answers_in_json_and_stops_on_ctrl_c(coll_dir):
    """One process under granian: the same answers as waitress, the body limit and the Host check in the API's
    JSON, HTTP it cannot parse refused, and Ctrl-C (SIGINT) stops it within seconds."""
    served = Served(coll_dir, "--http", "granian", "--max-upload-mb", "0.01", processes=1)
    try:
        assert "(1 process, granian" in served.lines[-1] and len(served.children()) == 1
        status, answer = served.call("POST", "api/search", {"id": 5, "k": 3})
        assert status == 200 and answer["results"][0]["id"] == 5 and len(answer["results"]) == 3
        port = int(served.url.rstrip("/").rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 999999999\r\n\r\n" + b"x" * 1000)
            head, body = _read_response(s)
        assert head.startswith(b"HTTP/1.1 413") and json.loads(body)["error"]["code"] == "request_too_large"
        req = urllib.request.Request(served.url + "api/health", headers={"Host": "evil.example"})
        try:
            urllib.request.urlopen(req, timeout=30)
            raise AssertionError("a foreign Host header was answered")
        except urllib.error.HTTPError as exc:
            assert exc.code == 400 and json.load(exc)["error"]["code"] == "host_not_allowed"
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 400")
    finally:
        started = time.monotonic()
        assert served.stop(signal.SIGINT) == 0 and time.monotonic() - started < 10


def test_granian_missing_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "granian._granian", None)       # as if not installed
    r = CliRunner().invoke(main, ["serve", "-c", "anything", "--http", "granian"])
    assert r.exit_code == 1 and "pip install 'nearsight[fast]'" in r.output and len(r.output.strip().splitlines()) == 1


def _read_response(s: socket.socket) -> tuple[bytes, bytes]:
    """(head, body) of one HTTP response with a Content-Length, however the server splits it into packets."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: *(\d+)", head, re.I).group(1))
    while len(body) < length:
        body += s.recv(65536)
    return head, body
