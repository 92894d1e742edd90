"""Heavy image jobs: the bounded executor (states, progress, queue full, cancel queued and running, TTL and
retention, a worker that dies) and its HTTP side (/api/jobs, ?async=1, 503 + Retry-After, 404, 409, a
client that disconnects). Behaviour, not wall time: a stand-in method (``gated``, run in the real worker
processes) holds each job until the test releases it, so every state is reached on purpose.
"""
from __future__ import annotations

import base64
import io
import os
import time

import pytest

GATE_ENV = "NEARSIGHT_TEST_JOB_GATE"
FAIL_N = 64  # a gated job with this n fails the way a method's bad input would


def gated(collection, method, inputs, progress):
    """Stands in for a method in the worker: reports a step every 10 ms until the file named after its ``n``
    (or ``all``) appears in the gate folder."""
    from nearsight.retrieval.errors import InvalidQuery

    gate = os.environ[GATE_ENV]
    step = 0
    while not (os.path.exists(os.path.join(gate, str(inputs["n"]))) or os.path.exists(os.path.join(gate, "all"))):
        progress("waiting", min(0.5, step / 1000))
        step += 1
        time.sleep(0.01)
    progress("finishing", 0.9)
    if inputs["n"] == FAIL_N:
        raise InvalidQuery("told to fail")
    return {"method": method, "n": inputs["n"], "items": collection.count}


def _until(predicate, timeout=60.0):
    """Poll ``predicate`` until true (the timeout only guards against a hang; no test depends on it)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _release(gate, name):
    (gate / str(name)).touch()


@pytest.fixture
def gate(tmp_path, monkeypatch):
    folder = tmp_path / "gate"
    folder.mkdir()
    monkeypatch.setenv(GATE_ENV, str(folder))  # the workers are spawned after this, and inherit it
    return folder


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def executor(coll_dir, gate):
    from nearsight.server.jobs import JobConfig, JobExecutor

    clock = FakeClock()
    ex = JobExecutor(JobConfig(workers=1, queue=1, ttl=60, keep=2), coll_dir, device="cpu",
                     runner=f"{__name__}:gated", clock=clock)
    ex.clock = clock
    yield ex
    _release(gate, "all")
    ex.close()


# -- the executor ---------------------------------------------------------------------------------------

def test_states_progress_and_result(executor, gate):
    from nearsight.server.jobs import QueueFull

    first = executor.submit("recolor", {"n": 1})
    _until(lambda: executor.status(first)["stage"] == "waiting")  # the worker has it and reports
    second = executor.submit("recolor", {"n": 2})
    running, queued = executor.status(first), executor.status(second)
    assert running["state"] == "running" and running["queue_position"] == 0 and 0 <= running["fraction"] <= 0.5
    assert queued["state"] == "queued" and queued["queue_position"] == 1 and queued["stage"] is None
    with pytest.raises(QueueFull) as full:  # one running, one waiting: the most this executor holds
        executor.submit("recolor", {"n": 3})
    assert full.value.retry_after >= 1
    assert executor.counts() == {"queued": 1, "running": 1, "done": 0, "failed": 0, "cancelled": 0}

    _release(gate, 1)
    assert first.wait(60)
    done = executor.status(first)
    assert done["state"] == "done" and done["fraction"] == 1.0 and done["expires_in_s"] == 60
    assert first.result == {"method": "recolor", "n": 1, "items": 8}  # the worker opened the collection
    _until(lambda: executor.status(second)["state"] == "running")
    _release(gate, 2)
    assert second.wait(60) and second.state == "done"

    failing = executor.submit("colorize", {"n": FAIL_N})
    _release(gate, FAIL_N)
    assert failing.wait(60)
    assert failing.state == "failed" and type(failing.error).__name__ == "InvalidQuery"
    assert "told to fail" in str(failing.error)


def test_cancel_a_queued_and_a_running_job(executor, gate):
    running = executor.submit("complete", {"n": 1})
    _until(lambda: executor.status(running)["stage"] == "waiting")
    queued = executor.submit("complete", {"n": 2})
    assert executor.cancel(queued) and queued.state == "cancelled"  # at once: it never reaches a worker
    assert executor.status(queued)["queue_position"] == 0
    assert executor.cancel(running) and executor.status(running)["cancel_requested"]
    assert running.wait(60) and running.state == "cancelled"  # the worker stopped at its next step
    assert running.result is None and not executor.cancel(running)  # finished: nothing to cancel
    after = executor.submit("complete", {"n": 3})  # the same worker takes the next job
    _release(gate, 3)
    assert after.wait(60) and after.state == "done"


def test_finished_jobs_expire_after_the_ttl_and_past_the_retention_count(executor, gate):
    _release(gate, "all")
    jobs = []
    for n in (1, 2):
        jobs.append(executor.submit("recolor", {"n": n}))
        assert jobs[-1].wait(60)
    assert [executor.get(j.id) for j in jobs] == jobs
    executor.clock.now += 30
    assert executor.status(jobs[0])["expires_in_s"] == 30
    jobs.append(executor.submit("recolor", {"n": 3}))
    assert jobs[-1].wait(60)
    assert executor.get(jobs[0].id) is None  # keep=2: the oldest finished job went first
    assert executor.get(jobs[1].id) is jobs[1]
    executor.clock.now += 31  # jobs[1] finished 61 s ago, jobs[2] about 31 s ago
    assert executor.get(jobs[1].id) is None and executor.get(jobs[2].id) is jobs[2]
    executor.clock.now += 30
    assert executor.get(jobs[2].id) is None and executor.counts()["done"] == 0


def test_a_worker_that_dies_fails_its_job_and_is_replaced(executor, gate):
    import signal

    job = executor.submit("complete", {"n": 1})
    _until(lambda: executor.status(job)["stage"] == "waiting")
    os.kill(executor._slots[0]._process.pid, signal.SIGKILL)  # as the kernel's OOM killer would
    assert job.wait(60) and job.state == "failed" and "exited" in str(job.error)
    _release(gate, 2)
    after = executor.submit("complete", {"n": 2})
    assert after.wait(60) and after.state == "done"


# -- HTTP ---------------------------------------------------------------------------------------------

def _png_b64(image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


@pytest.fixture
def gated_app(coll_dir, gate):
    """The app with a one-worker, one-slot queue whose worker runs ``gated`` instead of the method."""
    from nearsight.server import job_routes
    from nearsight.server.app import ServerConfig, create_app
    from nearsight.server.jobs import JobConfig, JobExecutor

    config = JobConfig(workers=1, queue=1)
    app = create_app(ServerConfig(coll_dir, token="s3cret", jobs=config))
    app.extensions[job_routes.EXTENSION] = JobExecutor(config, coll_dir, device="cpu", runner=f"{__name__}:gated")
    yield app
    _release(gate, "all")
    app.extensions[job_routes.EXTENSION].close()
    app.extensions["nearsight"].holder.collection.close()


AUTH = {"Authorization": "Bearer s3cret"}


def test_job_api_queue_full_cancel_and_errors(gated_app, gate):
    client = gated_app.test_client()
    assert client.post("/api/jobs?method=recolor", json={"id": 0, "like": 1}).status_code == 401  # token rules
    assert client.get("/api/jobs/whatever").status_code == 401

    r = client.post("/api/jobs?method=recolor", json={"id": 0, "like": 1, "n": 1}, headers=AUTH)
    assert r.status_code == 202, r.get_json()
    first = r.get_json()
    assert first["state"] in ("queued", "running") and first["method"] == "recolor"
    assert r.headers["Location"] == first["status_url"] == f"/api/jobs/{first['id']}"
    _until(lambda: client.get(first["status_url"], headers=AUTH).get_json()["stage"] == "waiting")
    r = client.post("/api/recolor?async=1", json={"id": 0, "like": 1, "n": 2}, headers=AUTH)
    assert r.status_code == 202 and r.get_json()["queue_position"] == 1
    second = r.get_json()

    for url in ("/api/jobs?method=colorize", "/api/colorize"):  # full: async and sync alike
        r = client.post(url, json={"id": 0, "n": 3}, headers=AUTH)
        assert r.status_code == 503 and r.get_json()["error"]["code"] == "queue_full"
        assert int(r.headers["Retry-After"]) >= 1

    r = client.get(first["status_url"] + "/result", headers=AUTH)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "job_not_finished"
    r = client.delete(second["status_url"], headers=AUTH)
    assert r.status_code == 200 and r.get_json()["state"] == "cancelled"
    r = client.delete(first["status_url"], headers=AUTH)
    assert r.status_code == 202 and r.get_json()["cancel_requested"]
    _until(lambda: client.get(first["status_url"], headers=AUTH).get_json()["state"] == "cancelled")
    for job in (first, second):
        assert client.delete(job["status_url"], headers=AUTH).get_json()["error"]["code"] == "job_finished"
        assert client.get(job["status_url"] + "/result", headers=AUTH).status_code == 409

    r = client.post("/api/jobs?method=recolor", json={"id": 0, "like": 1, "n": 5}, headers=AUTH)
    job = r.get_json()
    _release(gate, 5)
    _until(lambda: client.get(job["status_url"], headers=AUTH).get_json()["state"] == "done")
    status = client.get(job["status_url"], headers=AUTH).get_json()
    assert status["fraction"] == 1.0 and status["result_url"] == job["status_url"] + "/result"
    assert client.get(status["result_url"], headers=AUTH).get_json() == {"method": "recolor", "n": 5, "items": 8}

    r = client.post("/api/jobs?method=recolor", json={"id": 0, "like": 1, "n": FAIL_N}, headers=AUTH)
    _release(gate, FAIL_N)
    failed_url = r.get_json()["status_url"]
    _until(lambda: client.get(failed_url, headers=AUTH).get_json()["state"] == "failed")
    assert client.get(failed_url, headers=AUTH).get_json()["error"] == {"code": "invalid_query",
                                                                       "message": "told to fail"}
    assert client.get(failed_url + "/result", headers=AUTH).status_code == 400  # the job's own error

    for method, status in (("DELETE", 404), ("GET", 404)):
        r = client.open("/api/jobs/no-such-job", method=method, headers=AUTH)
        assert r.status_code == status and r.get_json()["error"]["code"] == "unknown_job"
    assert client.post("/api/jobs?method=search", json={"id": 0}, headers=AUTH).status_code == 400
    # Bad input fails at submit with the usual status, and no job is made.
    r = client.post("/api/jobs?method=recolor", json={"id": 0, "like": 999}, headers=AUTH)
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "unknown_item"
    r = client.post("/api/jobs?method=colorize", json={"image": _png_b64(_tiny_image()), "n": 2}, headers=AUTH)
    assert r.status_code == 415
    assert sum(gated_app.extensions["nearsight.jobs"].counts().values()) == 4  # the four accepted above


def _tiny_image():
    from PIL import Image

    return Image.new("RGB", (8, 8))


def test_a_client_that_disconnects_cancels_its_job(gated_app, gate):
    client = gated_app.test_client()
    calls = []

    def disconnected():  # what waitress's environ offers; gone on the second check
        calls.append(1)
        return len(calls) > 1

    r = client.post("/api/recolor", json={"id": 0, "like": 1, "n": 7}, headers=AUTH,
                    environ_overrides={"waitress.client_disconnected": disconnected})
    assert r.status_code == 499
    ex = gated_app.extensions["nearsight.jobs"]
    _until(lambda: ex.counts()["cancelled"] == 1)
    assert ex.counts()["running"] == ex.counts()["queued"] == 0


def _check_schema(client, instance, name):
    import jsonschema

    doc = client.get("/openapi.json").get_json()
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    jsonschema.validate(instance, schema, cls=jsonschema.Draft202012Validator)


def test_waitress_tells_of_a_client_that_hangs_up_and_its_job_is_cancelled(gated_app, gate):
    """The real thing behind the test above: ``nearsight serve``'s waitress settings, a raw socket closed."""
    import json
    import socket
    import threading

    from waitress import create_server

    server = create_server(gated_app, host="127.0.0.1", port=0, threads=2, channel_request_lookahead=1)
    threading.Thread(target=server.run, daemon=True).start()
    ex = gated_app.extensions["nearsight.jobs"]
    try:
        body = json.dumps({"id": 0, "like": 1, "n": 9})
        sock = socket.create_connection(("127.0.0.1", server.effective_port), timeout=30)
        sock.sendall(f"POST /api/recolor HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer s3cret\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
        _until(lambda: ex.counts()["running"] == 1)
        sock.close()
        _until(lambda: ex.counts()["cancelled"] == 1)
    finally:
        server.close()


def test_real_methods_as_jobs_report_progress_and_answer_like_the_routes(coll_dir):
    """The default runner in a real worker: an async colorize and recolor, polled to the end."""
    from conftest import make_photo

    from nearsight.server.app import ServerConfig, create_app
    from nearsight.server.jobs import JobConfig

    app = create_app(ServerConfig(coll_dir, jobs=JobConfig(workers=1, queue=2, max_side=64)))
    client = app.test_client()
    try:
        r = client.post("/api/colorize?async=1", json={"image": _png_b64(make_photo(3, (96, 72)).convert("L")),
                                                        "n": 2})
        assert r.status_code == 202, r.get_json()
        url = r.get_json()["status_url"]
        stages = set()

        def finished():
            status = client.get(url).get_json()
            stages.add(status["stage"])
            return status["state"] not in ("queued", "running")

        _until(finished, timeout=120)
        status = client.get(url).get_json()
        assert status["state"] == "done", status
        _check_schema(client, r.get_json(), "JobStatus")  # the 202's status, and the final one
        _check_schema(client, status, "JobStatus")
        assert stages - {None} <= {"start", "neighbors", "load", "align", "cut", "finish"}
        answer = client.get(status["result_url"]).get_json()
        assert set(answer) == {"image", "neighbor_ids", "usage", "warnings", "took_ms"}
        assert answer["neighbor_ids"][0] == 3
        from PIL import Image

        out = Image.open(io.BytesIO(base64.b64decode(answer["image"].partition(",")[2])))
        assert out.size == (64, 48)  # reduced to the working size cap at submit
        r = client.post("/api/recolor", json={"id": 1, "like": 2})  # synchronous: waits on its job
        assert r.status_code == 200 and r.get_json()["reference_ids"] == [2]
        r = client.post("/api/complete?async=1", json={"id": 1, "mask": _png_b64(_tiny_image())})
        assert r.status_code == 422 and r.get_json()["error"]["code"] == "unknown_encoder"  # no gist: at submit
    finally:
        app.extensions["nearsight.jobs"].close()
        app.extensions["nearsight"].holder.collection.close()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to split")
def test_partition_gives_a_running_job_its_own_cores_and_the_searches_the_rest(coll_dir, gate):
    from nearsight.server.jobs import JobConfig, JobExecutor

    cores = sorted(os.sched_getaffinity(0))
    ex = JobExecutor(JobConfig(workers=1, queue=1, partition=True), coll_dir, device="cpu",
                     runner=f"{__name__}:gated")
    try:
        job = ex.submit("recolor", {"n": 1})
        _until(lambda: ex.status(job)["stage"] == "waiting")
        assert os.sched_getaffinity(ex._slots[0]._process.pid) == {cores[-1]}
        assert os.sched_getaffinity(0) == set(cores[:-1])  # this process's threads: the searches' side
        _release(gate, 1)
        assert job.wait(60)
        _until(lambda: os.sched_getaffinity(0) == set(cores))  # idle again: every core for the searches
    finally:
        ex.close()
        os.sched_setaffinity(0, cores)
