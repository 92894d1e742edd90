"""Mixed-load benchmark of the heavy-job executor: does scene completion as a service keep search fast?

One `nearsight serve` on loopback over the demo collection (the sample photos and captioned cut-outs,
indexed with tiny, gist and lab-layout; built once under out/bench_jobs, or --collection DIR), then:

1. baseline: searches (by id, k=10) at --search-concurrency for --baseline-seconds, nothing else running;
2. one completion alone (a --side px photo, a central hole, n=--n), after a warm-up one: the single-job
   time T1, from which the ideal rate for the worker count is 60 * workers / T1 per minute;
3. mixed: the same searches for --mixed-seconds while completion clients (synchronous POST /api/complete)
   arrive at concurrency 8 and then 32. A client that gets 503 waits its Retry-After and tries again; at
   the end of the phase a client still waiting closes its connection, which cancels its job.

The load clients of this script run on the cores the server keeps for searches (with --job-cores partition),
as remote clients would not share the workers' cores. Reported per mixed phase: search p50 / p99 against the
baseline (target p50 <= 2x), completions per minute at the steady rate (between the first and the last one
finished) against the ideal (target >= 0.9x), 503s issued, other 5xx (must be 0), peak RSS of the
server and of its workers (sampled every 0.2 s). Everything is bounded in count and time.

A control for the ideal (with --job-cores partition): a fixed numpy workload (FFTs, a matrix product, a
sparse solve: the kinds of work a completion does), in a process pinned to the workers' cores, timed in CPU
seconds alone and while the same searches run on the other cores. Our code shares nothing with it, so its
slowdown is what the chip itself takes from a worker's core when the other cores are busy (shared cache,
memory bandwidth, clock), which no job executor can give back.

    .venv/bin/python scripts/bench_jobs.py                          # builds out/bench_jobs/collection first
    .venv/bin/python scripts/bench_jobs.py --collection DIR         # any collection with gist
    .venv/bin/python scripts/bench_jobs.py --job-cores shared       # workers niced on all cores instead

Run it on an otherwise idle machine: the server, its workers and these clients share its cores, and other
work there takes CPU from the worker cores that the ideal rate assumes are free (the load average at the
end is printed in the JSON line).

Prints the figures, then one JSON line.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_serve import Server  # noqa: E402  (scripts/ is on the path when a script runs)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collection", help="Use (or build here) this collection; it needs gist.")
    p.add_argument("--samples", default=str(ROOT / "data" / "samples"))
    p.add_argument("--heavy-workers", type=int, default=None, help="Server's --heavy-workers (default: its own).")
    p.add_argument("--job-queue", type=int, default=8)
    p.add_argument("--job-cores", choices=["partition", "shared"], default="partition", help="Server's --job-cores.")
    p.add_argument("--search-concurrency", type=int, default=8)
    p.add_argument("--completion-concurrency", default="8,32", help="Comma-separated mixed phases.")
    p.add_argument("--baseline-seconds", type=float, default=20)
    p.add_argument("--mixed-seconds", type=float, default=90)
    p.add_argument("--side", type=int, default=1024, help="Long side of the photo to complete.")
    p.add_argument("--n", type=int, default=6, help="Composites per completion.")
    p.add_argument("--encoder", default="tiny", help="Encoder the searches use.")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


# -- the fixture ------------------------------------------------------------------------------------

def build_fixture(directory: str, samples: str) -> dict:
    from nearsight.indexer.ingest import IngestConfig, index_paths

    start = time.perf_counter()
    paths = [os.path.join(samples, "photos")]
    if os.path.exists(os.path.join(samples, "captioned.tsv")):
        paths.append(os.path.join(samples, "captioned.tsv"))
    summary = index_paths(directory, paths, IngestConfig(encoders=("tiny", "gist", "lab-layout"),
                                                         workers=min(2, os.cpu_count() or 1), progress=False))
    print(f"fixture: {summary.line()}", flush=True)
    return {"built": True, "build_s": round(time.perf_counter() - start, 1)}


def completion_body(samples: str, side: int, n: int, seed: int) -> str:
    """A photo from the samples at ``side`` px with a central hole (about 1/9 of it), as a JSON body."""
    from PIL import Image

    photos = sorted(Path(samples, "photos").glob("*.jpg"))
    rng = np.random.default_rng(seed)
    photo = Image.open(photos[int(rng.integers(len(photos)))]).convert("RGB")
    photo.thumbnail((side, side), Image.Resampling.LANCZOS)
    w, h = photo.size
    mask = np.zeros((h, w), np.uint8)
    mask[h // 3:2 * h // 3, w // 3:2 * w // 3] = 255

    def b64(image, fmt):
        out = io.BytesIO()
        image.save(out, format=fmt, quality=92)
        return base64.b64encode(out.getvalue()).decode()

    return json.dumps({"image": b64(photo, "JPEG"), "mask": b64(Image.fromarray(mask), "PNG"), "n": n})


# -- the server -------------------------------------------------------------------------------------

class RssSampler:
    """Peak RSS of the server and of its worker processes, sampled every 0.2 s."""

    def __init__(self, pid: int):
        import psutil

        self.process = psutil.Process(pid)
        self.peak_server = self.peak_total = self.peak_worker = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._stop.wait(0.2):
            try:
                server = self.process.memory_info().rss
                workers = [c.memory_info().rss for c in self.process.children(recursive=True)
                           if "spawn_main" in " ".join(c.cmdline())]  # not multiprocessing's resource tracker
            except psutil.Error:
                continue
            self.peak_server = max(self.peak_server, server)
            self.peak_worker = max([self.peak_worker, *workers])
            self.peak_total = max(self.peak_total, server + sum(workers))

    def read(self) -> dict:
        mb = 1024 * 1024
        return {"server_mb": round(self.peak_server / mb), "worker_mb": round(self.peak_worker / mb),
                "total_mb": round(self.peak_total / mb)}

    def reset(self):
        self.peak_server = self.peak_total = self.peak_worker = 0

    def stop(self):
        self._stop.set()


# -- the clients ------------------------------------------------------------------------------------

def post(conn: http.client.HTTPConnection, path: str, body: str) -> tuple[int, dict, bytes]:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def search_load(port: int, ids: list[int], concurrency: int, seconds: float, encoder: str) -> dict:
    """Searches by id from ``concurrency`` threads for ``seconds``: latencies and statuses."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker(offset):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        i = offset
        while time.perf_counter() < deadline:
            body = json.dumps({"id": ids[i % len(ids)], "k": 10, "encoder": encoder})
            i += concurrency
            t = time.perf_counter()
            try:
                status, _, _ = post(conn, "/api/search", body)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                status = -1
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(time.perf_counter() - t)
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = np.array(latencies) * 1000
    return {"ok": len(latencies), "statuses": dict(sorted(statuses.items())),
            "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
            "qps": round(len(ms) / seconds, 1)}


def completion_load(port: int, body: str, concurrency: int, seconds: float) -> dict:
    """Synchronous completions from ``concurrency`` clients until ``seconds`` have passed."""
    finished: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds

    def client():
        while (left := deadline - time.perf_counter()) > 0.5:
            # A client still waiting at the deadline gives up: closing the connection cancels its job.
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=left)
            try:
                status, headers, _ = post(conn, "/api/complete", body)
            except (OSError, http.client.HTTPException):
                status, headers = 0, {}  # 0: gave up at the deadline
            finally:
                conn.close()
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    finished.append(time.perf_counter() - start)
            if status == 503:
                time.sleep(min(float(headers.get("Retry-After", 1)), max(0.0, deadline - time.perf_counter())))

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The steady rate: finishes between the first and the last one. Counting whole completions in a window
    # of a few job lengths would instead lose up to one job to where the window happens to cut.
    steady = (len(finished) - 1) * 60 / (finished[-1] - finished[0]) if len(finished) >= 2 else 0.0
    return {"finished": len(finished), "statuses": dict(sorted(statuses.items())),
            "in_window_per_minute": round(len(finished) * 60 / seconds, 2), "per_minute": round(steady, 2)}


def one_completion(port: int, body: str) -> tuple[int, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t = time.perf_counter()
    status, _, data = post(conn, "/api/complete", body)
    conn.close()
    if status != 200:
        raise SystemExit(f"a lone completion failed: HTTP {status}: {data[:300]!r}")
    return status, time.perf_counter() - t


def server_errors(*runs: dict) -> int:
    """5xx other than the 503s of a full queue (-1: a connection error)."""
    return sum(n for run in runs for s, n in run["statuses"].items() if s >= 500 and s != 503 or s == -1)


# -- main -------------------------------------------------------------------------------------------

def main() -> None:
    args = parse_args()
    directory = args.collection or str(ROOT / "out" / "bench_jobs" / "collection")
    fixture = {"built": False}
    if not os.path.exists(os.path.join(directory, "collection.json")):
        fixture = build_fixture(directory, args.samples)
    from nearsight.retrieval.collection import Collection
    from nearsight.server.jobs import JobConfig

    coll = Collection.open(directory)
    n_items, ids = coll.count, [int(i) for i in coll.embedding_matrix(args.encoder).ids]
    coll.close()
    rng = np.random.default_rng(args.seed)
    ids = [ids[i] for i in rng.permutation(len(ids))]
    body = completion_body(args.samples, args.side, args.n, args.seed)
    phases = [int(c) for c in args.completion_concurrency.split(",") if c.strip()]

    server = Server(directory, ("--job-queue", str(args.job_queue), "--job-cores", args.job_cores,
                                *(("--heavy-workers", str(args.heavy_workers)) if args.heavy_workers else ())))
    rss = RssSampler(server.proc.pid)
    workers = args.heavy_workers or JobConfig().workers  # the server's own default otherwise
    client_cores = _pin_clients(workers, args.job_cores)
    try:
        search_load(server.port, ids, args.search_concurrency, 2, args.encoder)  # warm-up
        baseline = search_load(server.port, ids, args.search_concurrency, args.baseline_seconds, args.encoder)
        print(f"baseline searches: p50 {baseline['p50_ms']} ms, p99 {baseline['p99_ms']} ms, {baseline['qps']} q/s",
              flush=True)
        one_completion(server.port, body)  # warm-up: the worker process starts, imports, opens the collection
        cpu = _worker_cpu(server)
        alone = [one_completion(server.port, body)[1] for _ in range(2)]
        cpu_per_completion = (_worker_cpu(server) - cpu) / len(alone)  # what one costs, however busy the machine
        t1 = float(np.median(alone))
        ideal = 60.0 * workers / t1
        print(f"one completion alone: {t1:.2f} s ({args.side} px, n={args.n}; {cpu_per_completion:.2f} s of worker "
              f"CPU); ideal {ideal:.1f}/min with {workers} worker(s); RSS so far {rss.read()}", flush=True)
        base_rss = rss.read()
        control = chip_control(server.port, ids, args, workers) if client_cores else None
        mixed = []
        for concurrency in phases:
            rss.reset()
            cpu, start = _worker_cpu(server), time.perf_counter()
            result: dict = {}
            done = threading.Thread(target=lambda: result.update(
                completions=completion_load(server.port, body, concurrency, args.mixed_seconds)))
            done.start()
            searches = search_load(server.port, ids, args.search_concurrency, args.mixed_seconds, args.encoder)
            done.join()
            worker_cores = (_worker_cpu(server) - cpu) / (time.perf_counter() - start)
            comp = result["completions"]
            phase = {"completion_concurrency": concurrency, "searches": searches, "completions": comp,
                     "search_p50_over_baseline": _ratio(searches["p50_ms"], baseline["p50_ms"]),
                     "search_p99_over_baseline": _ratio(searches["p99_ms"], baseline["p99_ms"]),
                     "completions_over_ideal": round(comp["per_minute"] / ideal, 3),
                     "http_503": comp["statuses"].get(503, 0), "server_errors": server_errors(searches, comp),
                     "worker_cpu_cores": round(worker_cores, 3),
                     "peak_rss": rss.read()}
            mixed.append(phase)
            print(f"mixed, {concurrency} completion clients: searches p50 {searches['p50_ms']} ms "
                  f"({phase['search_p50_over_baseline']}x baseline), p99 {searches['p99_ms']} ms "
                  f"({phase['search_p99_over_baseline']}x); completions {comp['per_minute']}/min "
                  f"({phase['completions_over_ideal']}x ideal), statuses {comp['statuses']}; 503s "
                  f"{phase['http_503']}; other 5xx {phase['server_errors']}; peak RSS {phase['peak_rss']}; the "
                  f"workers used {worker_cores:.2f} cores of CPU", flush=True)
            _until_idle(server)
        alive = server.proc.poll() is None
    finally:
        rss.stop()
        server.stop()

    load = os.getloadavg()
    print(json.dumps({
        "bench": "jobs", "items": n_items, "cpus": os.cpu_count(), "loadavg_1m": round(load[0], 2),
        "heavy_workers": workers, "job_queue": args.job_queue, "job_cores": args.job_cores,
        "search_concurrency": args.search_concurrency, "client_cores": client_cores,
        "completion": {"side": args.side, "n": args.n, "alone_s": round(t1, 3),
                       "alone_worker_cpu_s": round(cpu_per_completion, 3),
                       # the rate if each worker had a whole core to itself (what an idle machine gives)
                       "cpu_ideal_per_minute": round(60.0 * workers / max(cpu_per_completion, 1e-9), 2),
                       "alone_runs_s": [round(a, 3) for a in alone], "ideal_per_minute": round(ideal, 2)},
        "baseline_search": baseline, "rss_after_one_completion": base_rss, "chip_control": control,
        "mixed": mixed,
        "server_alive_after": alive, "fixture": fixture,
    }, separators=(",", ":")))


def _control_work(rounds: int) -> float:
    """CPU seconds of a fixed numpy / scipy workload (the kinds of work a completion does)."""
    import scipy.sparse
    import scipy.sparse.linalg

    rng = np.random.default_rng(0)
    image = rng.random((512, 512), dtype=np.float32)
    a, b = rng.random((384, 384), dtype=np.float32), rng.random((384, 384), dtype=np.float32)
    n = 128
    lap = scipy.sparse.diags([-1.0, -1.0, 4.0, -1.0, -1.0], [-n, -1, 0, 1, n], shape=(n * n, n * n), format="csr")
    rhs = rng.random(n * n)
    start = time.process_time()
    for _ in range(rounds):
        np.fft.irfft2(np.fft.rfft2(image) * np.fft.rfft2(image[::-1]))
        a @ b
        scipy.sparse.linalg.cg(lap, rhs, maxiter=60)
    return time.process_time() - start


def _control_child(cores, rounds: int, queue) -> None:
    os.sched_setaffinity(0, cores)
    queue.put(_control_work(rounds))


def chip_control(port: int, ids: list[int], args, workers: int, rounds: int = 100) -> dict:
    """CPU seconds of the fixed workload on the workers' cores, alone and beside the searches (module doc)."""
    import multiprocessing

    cores = sorted(os.sched_getaffinity(0) | set(range(os.cpu_count())))[-workers:]
    ctx = multiprocessing.get_context("spawn")

    def run() -> float:
        queue = ctx.Queue()
        child = ctx.Process(target=_control_child, args=(cores, rounds, queue))
        child.start()
        seconds = queue.get()
        child.join()
        return seconds

    run()  # warm-up: imports, first-touch pages
    alone = float(np.median([run() for _ in range(3)]))
    busy, box = [], {}
    stop = threading.Event()

    def searches():
        while not stop.is_set():
            box.update(search_load(port, ids, args.search_concurrency, 2, args.encoder))

    loader = threading.Thread(target=searches)
    loader.start()
    try:
        time.sleep(1)
        busy = [run() for _ in range(3)]
    finally:
        stop.set()
        loader.join()
    beside = float(np.median(busy))
    out = {"cores": cores, "alone_cpu_s": round(alone, 3), "beside_searches_cpu_s": round(beside, 3),
           "slowdown": round(beside / alone, 3)}
    print(f"chip control: the same numpy work on core(s) {cores} costs {alone:.2f} CPU s alone, {beside:.2f} beside "
          f"the searches ({out['slowdown']}x): what the chip takes from a worker core, whatever the executor",
          flush=True)
    return out


def _pin_clients(workers: int, job_cores: str) -> list[int] | None:
    """Keep this process's load clients off the job workers' cores, as remote clients would be.

    With ``--job-cores partition`` the server gives its workers the last cores; clients running on those
    cores would take CPU from the very jobs whose rate is measured against a whole core each."""
    if job_cores != "partition" or not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) <= workers:
        return None
    os.sched_setaffinity(0, cores[:-workers])  # before the client threads start, so they all inherit it
    print(f"load clients on cores {cores[:-workers]}, job workers on {cores[-workers:]}", flush=True)
    return cores[:-workers]


def _worker_cpu(server: Server) -> float:
    """CPU seconds (user + system) the server's worker processes have used so far."""
    import psutil

    total = 0.0
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                times = child.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _until_idle(server: Server, timeout: float = 120) -> None:
    """Wait until the workers are idle (the jobs of clients that gave up at the end of a phase are cancelled
    within a stage), so that one phase's leftovers do not run into the next."""
    import psutil

    workers = [c for c in psutil.Process(server.proc.pid).children(recursive=True)
               if "spawn_main" in " ".join(c.cmdline())]
    for w in workers:
        w.cpu_percent(interval=None)  # the first call only starts the count
    deadline, quiet = time.time() + timeout, 0
    while time.time() < deadline and quiet < 2:
        time.sleep(1)
        busy = sum(w.cpu_percent(interval=None) for w in workers if w.is_running())
        quiet = quiet + 1 if busy < 10 else 0


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


if __name__ == "__main__":
    main()
