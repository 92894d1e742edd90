"""HTTP side of the heavy image jobs: the ``/api/jobs`` blueprint, and ``run_job`` for the image routes.

- ``POST /api/complete`` (``/colorize``, ``/recolor``) check their inputs, submit a job and wait for it,
  answering as before; with ``?async=1`` they answer 202 at once with the job's status instead. A
  client that disconnects while waiting cancels its job (waitress tells, with ``channel_request_lookahead``).
- ``POST /api/jobs?method=complete`` takes the same bodies as the routes and answers 202.
- ``GET /api/jobs/<id>``: the state (queued with a position, running with a stage and a fraction, done,
  failed with the JSON error, cancelled); ``GET /api/jobs/<id>/result``: the method's answer once done.
- ``DELETE /api/jobs/<id>``: cancels a queued job (200) or asks a running one to stop at its next stage
  (202); a finished job is 409, an unknown or forgotten one 404.
- A full queue is 503 ``queue_full`` with ``Retry-After`` (seconds), for both kinds of request.

The token rule is the rest of ``/api``'s (``api.require_token``).
"""
from __future__ import annotations

import time

from flask import Blueprint, current_app, g, jsonify, request, url_for

from .api import require_token
from .app import STATUS, error_response, state
from .jobs import CANCELLED, DONE, FAILED, JobExecutor, QueueFull
from .methods import METHODS, prepare

bp = Blueprint("jobs", __name__, url_prefix="/api/jobs")
bp.before_request(require_token)

EXTENSION = "nearsight.jobs"
WAIT_POLL_S = 0.25  # how often a waiting synchronous request checks that its client is still there
CLIENT_CLOSED = 499  # nginx's "client closed request": written to no one, but honest in the access log


def executor() -> JobExecutor:
    return current_app.extensions[EXTENSION]


def install(app, config) -> None:
    """Give ``app`` its executor (workers start with the first job). Under ``serve --processes`` its job ids
    start with ``p<process index>.``: the process that owns the job."""
    prefix = f"p{config.process}." if config.process is not None else ""
    app.extensions[EXTENSION] = JobExecutor(config.jobs, config.collection, device=config.device, id_prefix=prefix)


def run_job(method: str, inputs: dict, started: float | None = None):
    """Check and submit; then 202 with the status (``?async=1`` or ``POST /api/jobs``) or wait and answer."""
    started = time.perf_counter() if started is None else started
    ex = executor()
    inputs = prepare(state().holder.fresh(), method, inputs, ex.config.max_side)
    try:
        job = ex.submit(method, inputs)
    except QueueFull as exc:
        response = error_response(503, "queue_full", str(exc))
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    if g.get("nearsight_async") or request.args.get("async") in ("1", "true"):
        response = jsonify(_status(ex, job))
        response.status_code = 202
        response.headers["Location"] = url_for("jobs.get_job", job_id=job.id)
        return response
    disconnected = request.environ.get("waitress.client_disconnected")
    while not job.wait(WAIT_POLL_S):
        if disconnected is not None and disconnected():
            ex.cancel(job)
            return error_response(CLIENT_CLOSED, "client_closed", "the client went away; its job was cancelled")
    if job.state == DONE:
        answer = dict(job.result)
        answer["took_ms"] = round((time.perf_counter() - started) * 1000, 3)  # queue wait included
        return jsonify(answer)
    return _job_error(job)


def _status(ex: JobExecutor, job) -> dict:
    answer = ex.status(job)
    answer["status_url"] = url_for("jobs.get_job", job_id=job.id)
    if job.state == DONE:
        answer["result_url"] = url_for("jobs.job_result", job_id=job.id)
    if job.state == FAILED:
        _, code, message = _error_fields(job.error)
        answer["error"] = {"code": code, "message": message}
    return answer


def _error_fields(exc) -> tuple[int, str, str]:
    """(status, code, message) of a failed job's error, as the app's error handler would answer it."""
    if exc is not None:
        for cls, status, code in STATUS:
            if isinstance(exc, cls):
                return status, code, str(exc)
    return 500, "internal_error", "the job failed on the server"


def _job_error(job):
    if job.state == CANCELLED:
        return error_response(409, "job_cancelled", f"job {job.id} was cancelled")
    return error_response(*_error_fields(job.error))


def _job(job_id: str):
    """(job, None), or (None, the answer): 404, or the owner's answer for a job of another server process."""
    owner = _owner(job_id)
    if owner is not None and owner != state().config.process:
        return None, _forward(owner)
    job = executor().get(job_id)
    if job is None:
        return None, error_response(404, "unknown_job", f"no job {job_id!r}: it never existed, or it finished "
                                                        f"more than {executor().config.ttl:g} s ago and was forgotten")
    return job, None


def _owner(job_id: str) -> int | None:
    """The server process a job id names (``p2.xyz`` -> 2), or None; only under ``serve --processes``."""
    head, dot, _ = job_id.partition(".")
    if not dot or not state().config.peers or head[:1] != "p" or not head[1:].isdigit():
        return None
    index = int(head[1:])
    return index if index < len(state().config.peers) else None


def _forward(owner: int):
    """This request, answered by the server process that owns its job (on its private loopback port)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", state().config.peers[owner], timeout=60)
    headers = {name: value for name, value in request.headers.items()
               if name.lower() in ("host", "authorization", "content-type", "accept")}
    try:
        conn.request(request.method, request.full_path.rstrip("?"), body=request.get_data() or None,
                     headers=headers)
        answer = conn.getresponse()
        body = answer.read()
    except OSError:
        return error_response(404, "unknown_job", f"the server process that ran job {request.view_args['job_id']!r} "
                                                  "restarted; its jobs are gone")
    finally:
        conn.close()
    return current_app.response_class(body, status=answer.status, content_type=answer.getheader("Content-Type"))


@bp.post("")
def submit_job():
    """The same body as ``POST /api/<method>``; answers 202 with the job's status."""
    method = request.args.get("method")
    if method not in METHODS:
        return error_response(400, "invalid_query", f"give the method as ?method= one of {', '.join(METHODS)}; "
                                                    f"got {method!r:.100}")
    g.nearsight_async = True
    return current_app.view_functions[f"api.{method}"]()


@bp.get("/<job_id>")
def get_job(job_id: str):
    job, missing = _job(job_id)
    return missing or jsonify(_status(executor(), job))


@bp.get("/<job_id>/result")
def job_result(job_id: str):
    job, missing = _job(job_id)
    if missing:
        return missing
    if job.state == DONE:
        return jsonify(job.result)
    if job.state in (FAILED, CANCELLED):
        return _job_error(job)
    return error_response(409, "job_not_finished",
                          f"job {job_id} is {job.state}; poll {url_for('jobs.get_job', job_id=job_id)}")


@bp.delete("/<job_id>")
def cancel_job(job_id: str):
    job, missing = _job(job_id)
    if missing:
        return missing
    ex = executor()
    if not ex.cancel(job):
        return error_response(409, "job_finished", f"job {job_id} is already {job.state}; nothing to cancel")
    response = jsonify(_status(ex, job))
    response.status_code = 200 if job.state == CANCELLED else 202  # a running job stops at its next stage
    return response
