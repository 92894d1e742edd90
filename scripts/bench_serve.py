"""Serving benchmark: `nearsight serve` (waitress) over a collection of 100k+ items, on loopback only.

1. The fixture (built once, reused while it matches): the real sample photos are indexed with an image
   encoder (default ``cnn``, EfficientNet-Lite0 with its packaged ImageNet weights); then synthetic items
   are written through the store and shard APIs until the collection holds --items: each embedding is a
   random blend of two real embeddings plus noise (re-normalised for inner-product encoders), each thumbnail
   a small re-encode of a real one, so every route has real data behind it. A PCA is fitted for the
   ``prefilter`` search mode. The synthetic items have no source file (their /image route answers 404).
   A stamp beside it records the collection format version, the nearsight version, a hash of the code that
   lays out stores, shards and PCA files and of this script's builders, and the fixture's parameters; a
   fixture whose stamp differs (or that no longer opens and answers) is built again.
2. The headline: the same seeded searches (half by id, half by vector; k=10) in the PCA pre-filter mode
   (``prefilter``: a shortlist in the fitted PCA space re-ranked exactly; the fast mode the server offers
   until an ANN index is built), run in-process through ``Collection.search`` and over HTTP against the
   real server, both at the same concurrency, bounded in count and time. Reported: p50 / p99 latency,
   throughput, errors (must be 0; a request not run before the time limit counts as an error), result
   mismatches between the two, their ratio (the HTTP overhead), and the pre-filter's measured recall@10
   against exact. A short run of exact searches (no pre-filter) is reported beside it.
3. schemathesis against a second, small collection that has every encoder (tiny, tiny-gray, gist,
   gist-gray, lab-layout, cnn, a seeded random-weight clip, a text model trained in it, a PCA and an ANN
   index), so that every route has something to answer with: image fields carry real images of fuzzed
   size, mode and format (``scripts/serve_fuzz_hooks.py``), so /api/complete, /api/colorize, /api/recolor
   and /api/jobs reach the methods. 5xx answers are counted (must be 0), with the statuses per operation.

    nice python scripts/bench_serve.py                       # builds out/bench_serve/ fixtures (minutes)
    nice python scripts/bench_serve.py --collection DIR      # the 100k fixture here (built if missing)
    nice python scripts/bench_serve.py --fuzz-only           # only schemathesis

With the fixtures built, a default run takes about 5 minutes on a loaded 2-core machine (load ~12).

Prints the figures, then one JSON line.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import http.client
import inspect
import io
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# The same per-call math threads as `nearsight serve` (--blas-threads 1), so the in-process baseline is
# the server's work without HTTP: 16 concurrent searches each spawning BLAS threads oversubscribe the cores.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nearsight.retrieval.collection import Collection  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collection", help="Reuse (or build here) the benchmark collection.")
    p.add_argument("--fuzz-collection", help="Reuse (or build here) the every-encoder collection schemathesis runs "
                                             "against (default out/bench_serve/every-encoder).")
    p.add_argument("--photos", default=str(ROOT / "data" / "samples" / "photos"),
                   help="Real photos to seed the fixture (generated ones if the folder is missing).")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--encoder", default="cnn")
    p.add_argument("--pca-dim", type=int, default=64)
    p.add_argument("--prefilter", type=int, default=256, help="PCA shortlist of the main run.")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--server-threads", type=int, default=16)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--exact-requests", type=int, default=32, help="Exact (no pre-filter) searches, each way.")
    p.add_argument("--exact-concurrency", type=int, default=4,
                   help="Concurrency of the exact run (each exact search holds a float32 block of 64k rows).")
    p.add_argument("--sequential-requests", type=int, default=100,
                   help="Also one at a time (concurrency 1): the unqueued latency and the per-request HTTP cost.")
    p.add_argument("--time-limit", type=float, default=240, help="Seconds per timed phase at most; requests it leaves unsent count as errors.")
    p.add_argument("--fuzz-examples", type=int, default=30, help="schemathesis --max-examples per operation.")
    p.add_argument("--fuzz-seconds", type=int, default=120,
                   help="schemathesis budget (--max-time): 2/3 shared by the image methods, 1/3 for the other routes.")
    p.add_argument("--no-fuzz", action="store_true", help="Only the search timings.")
    p.add_argument("--fuzz-only", action="store_true", help="Only the schemathesis run (no 100k fixture).")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


# -- the fixture ------------------------------------------------------------------------------------

def build_fixture(directory: str, photos: str, items: int, encoder: str, pca_dim: int, seed: int) -> dict:
    from nearsight.indexer.ingest import IngestConfig, index_paths

    start = time.perf_counter()
    real_photos = os.path.isdir(photos) and any(os.scandir(photos))
    if not real_photos:
        photos = _generated_photos(os.path.join(os.path.dirname(directory), "generated-photos"), 200, seed)
    summary = index_paths(directory, [photos], IngestConfig(encoders=(encoder,), workers=min(2, os.cpu_count() or 1),
                                                            progress=False))
    print(f"fixture: indexed {photos}: {summary.line()}", flush=True)
    coll = Collection.open(directory, readonly=False)
    try:
        synthetic = _add_synthetic(coll, encoder, items, seed)
        fit_start = time.perf_counter()
        coll.fit_pca(encoder, pca_dim)
        print(f"fixture: PCA {pca_dim} fitted in {time.perf_counter() - fit_start:.1f}s", flush=True)
        count = coll.count
    finally:
        coll.close()
    return {"real": summary.added, "real_source": "sample photos" if real_photos else "generated",
            "synthetic": synthetic, "items": count, "build_s": round(time.perf_counter() - start, 1)}


def _generated_photos(folder: str, n: int, seed: int) -> str:
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        y, x = np.mgrid[0:192, 0:256].astype(np.float32)
        img = rng.uniform(0, 255, 3) + x[..., None] * rng.uniform(-1, 1, 3) + y[..., None] * rng.uniform(-1, 1, 3)
        for _ in range(5):
            x0, y0 = rng.integers(0, 200), rng.integers(0, 150)
            img[y0:y0 + rng.integers(10, 90), x0:x0 + rng.integers(10, 120)] = rng.uniform(0, 255, 3)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(folder, f"g{i:04d}.jpg"))
    return folder


def _add_synthetic(coll: Collection, encoder: str, items: int, seed: int, chunk: int = 10_000) -> int:
    """Write items up to ``items`` through the store and shard APIs: blended real embeddings, real thumbnails."""
    from PIL import Image

    from nearsight.retrieval.embeddings import write_part
    from nearsight.retrieval.store import Item

    matrix = coll.embedding_matrix(encoder)
    real = matrix.vectors.astype(np.float32)
    spec = coll.encoder_spec(encoder)
    sources = [coll.item(int(i)) for i in matrix.ids]
    thumbs = []
    for item_id in matrix.ids:
        small = Image.open(io.BytesIO(coll.thumbnail(int(item_id)))).convert("RGB")
        small.thumbnail((128, 128))
        out = io.BytesIO()
        small.save(out, format="JPEG", quality=75)
        thumbs.append(out.getvalue())
    rng = np.random.default_rng(seed)
    added = 0
    emb_dir = os.path.join(coll.dir, "embeddings", encoder)
    scale = float(np.linalg.norm(real, axis=1).mean()) / np.sqrt(real.shape[1])
    while coll.count < items:
        n = min(chunk, items - coll.count)
        first = coll.store.next_id()
        ids = np.arange(first, first + n, dtype=np.int64)
        a, b = rng.integers(len(real), size=(2, n))
        w = rng.uniform(0, 1, (n, 1)).astype(np.float32)
        vectors = w * real[a] + (1 - w) * real[b] + 0.35 * scale * rng.standard_normal((n, real.shape[1]), np.float32)
        if spec["metric"] == "ip":
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        record = write_part(emb_dir, len(coll.store.parts(encoder)), vectors, ids)
        with coll.store.write() as w_:
            for item_id, src in zip(ids.tolist(), a.tolist()):
                s = sources[src]
                digest = hashlib.sha256(f"nearsight-bench-{item_id}".encode()).hexdigest()
                w_.put_item(Item(item_id, f"synthetic:{s.id}:{item_id}", digest, s.width, s.height, 0, 0,
                                 f"blend of items {s.id} and {sources[b[item_id - first]].id}"), thumbs[src])
                w_.put_hash(digest, item_id)
            w_.put_meta("next_id", first + n)
            w_.add_part(encoder, record)
        coll.refresh()
        added += n
        print(f"fixture: {coll.count} items", flush=True)
    return added


# -- fixture stamps: a cached fixture is reused only while it is what this code would build ---------

# The modules that decide what a collection looks like on disk (besides its format version).
LAYOUT_CODE = ("nearsight/retrieval/store.py", "nearsight/retrieval/embeddings.py", "nearsight/retrieval/pca.py")


def fixture_stamp(kind: str, builders: tuple, **params) -> dict:
    from nearsight import __version__
    from nearsight.retrieval.collection import FORMAT_VERSION

    code = hashlib.sha256()
    for path in LAYOUT_CODE:
        code.update((ROOT / path).read_bytes())
    for fn in builders:
        code.update(inspect.getsource(fn).encode())
    return {"kind": kind, "format": FORMAT_VERSION, "nearsight": __version__, "code": code.hexdigest()[:16], **params}


def _stamp_path(directory: str) -> str:
    return directory.rstrip("/") + ".fixture.json"


def fixture_state(directory: str, stamp: dict, default: bool) -> str:
    """"ok" (reuse), "build" (missing or a stale fixture of ours: rebuilt). A collection this script did
    not make is never deleted: with --collection pointing at one, it stops with one line."""
    has_collection = os.path.exists(os.path.join(directory, "collection.json"))
    old = None
    if os.path.exists(_stamp_path(directory)):
        with open(_stamp_path(directory)) as f:
            old = json.load(f)
    if old == stamp and has_collection:
        return "ok"
    if has_collection and old is None and not default:
        raise SystemExit(f"bench_serve: {directory} is a collection this script did not build (no "
                         f"{os.path.basename(_stamp_path(directory))}); give a new folder")
    if old is not None or has_collection:
        changed = sorted(k for k in set(stamp) | set(old or {}) if (old or {}).get(k) != stamp.get(k))
        print(f"fixture {directory}: stale ({', '.join(changed) or 'incomplete'} changed), building it again",
              flush=True)
    shutil.rmtree(directory, ignore_errors=True)
    if os.path.exists(_stamp_path(directory)):
        os.remove(_stamp_path(directory))
    return "build"


def write_stamp(directory: str, stamp: dict) -> None:
    """Written last: a build that stopped half-way leaves no stamp, so the next run builds again."""
    tmp = _stamp_path(directory) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(stamp, f, indent=1)
    os.replace(tmp, _stamp_path(directory))


# -- the every-encoder collection schemathesis runs against ------------------------------------------

# A small open_clip architecture with random weights (no hub here): the clip encoder's real code paths.
BENCH_CLIP = {"embed_dim": 64,
              "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
FUZZ_ENCODERS = ("tiny", "tiny-gray", "gist", "gist-gray", "lab-layout", "cnn", "clip")


def build_fuzz_fixture(directory: str, photos: str, captioned: str, n_photos: int, n_captioned: int) -> dict:
    """Photos and captioned images indexed with every encoder, a text model trained on the captions, a PCA
    and an ANN index: ``nearsight`` commands, as a user would make it."""
    start = time.perf_counter()
    os.makedirs(os.path.dirname(os.path.abspath(directory)), exist_ok=True)
    work = directory.rstrip("/") + ".inputs"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    lines = []
    if os.path.isdir(photos):
        names = sorted(n for n in os.listdir(photos) if n.lower().endswith((".jpg", ".jpeg", ".png")))
        lines += [os.path.abspath(os.path.join(photos, n)) for n in names[:n_photos]]
    if os.path.exists(captioned):
        base = os.path.dirname(os.path.abspath(captioned))
        with open(captioned) as f:
            rows = [ln.rstrip("\n").split("\t", 1) for ln in f if ln.strip() and not ln.startswith("#")]
        lines += [f"{os.path.join(base, path)}\t{caption}" for path, caption in rows[:n_captioned]]
    if not lines:
        folder = _generated_photos(os.path.join(work, "generated"), 60, 0)
        lines = [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
    listing = os.path.join(work, "list.tsv")
    with open(listing, "w") as f:
        f.write("\n".join(lines) + "\n")
    clip_config = os.path.join(work, "nearsight-bench-clip.json")
    with open(clip_config, "w") as f:
        json.dump(BENCH_CLIP, f)
    captions = sum("\t" in ln for ln in lines)
    steps = [("index", listing, "--encoders", ",".join(FUZZ_ENCODERS), "-o", f"clip.model_config={clip_config}",
              "-o", "clip.pretrained=random", "--no-index", "--quiet", "--workers", "1", "--device", "cpu")]
    if captions:
        steps.append(("train", "--image-encoder", "cnn", "--dim", "32", "--epochs", "3", "--sources", "captions",
                      "--no-index", "--quiet", "--device", "cpu"))
    steps += [("fit-pca", "--encoder", "cnn", "--dim", "16"), ("build-index", "--encoder", "tiny")]
    for step in steps:
        cmd = [sys.executable, "-m", "nearsight.server.cli", step[0], *step[1:2], "-c", directory, *step[2:]] \
            if step[0] == "index" else [sys.executable, "-m", "nearsight.server.cli", step[0], "-c", directory, *step[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        if proc.returncode != 0:
            raise SystemExit(f"bench_serve: building the fuzz collection: nearsight {step[0]} failed "
                             f"({proc.returncode}): {proc.stderr.strip()[-500:]}")
        print(f"fuzz fixture: nearsight {step[0]}: {(proc.stdout.strip().splitlines() or [''])[-1][:200]}",
              flush=True)
    coll = Collection.open(directory)
    try:
        encoders = list(coll.encoder_names)
        count = coll.count
    finally:
        coll.close()
    return {"items": count, "captioned": captions, "encoders": encoders, "build_s": round(time.perf_counter() - start, 1)}


def _missing_encoders(encoders: list[str], directory: str) -> list[str]:
    """Registered encoders the fuzz collection lacks (a trained model stands for ``triplet``)."""
    from nearsight.retrieval.encoders import list_encoders

    coll = Collection.open(directory)
    try:
        kinds = {coll.encoder_spec(n).get("kind", n) for n in coll.encoder_names}
    finally:
        coll.close()
    return [e for e in list_encoders() if e not in kinds and e not in encoders]


# -- the queries ------------------------------------------------------------------------------------

def make_queries(coll: Collection, encoder: str, n: int, k: int, seed: int, prefilter: int | None) -> list[dict]:
    """Seeded searches: half by id, half by a vector near a stored one. JSON bodies for /api/search."""
    rng = np.random.default_rng(seed + 1)
    matrix = coll.embedding_matrix(encoder)
    picks = matrix.ids[rng.integers(len(matrix), size=n)]
    vectors = matrix.reconstruct(picks[1::2])
    vectors += 0.05 * rng.standard_normal(vectors.shape).astype(np.float32) / np.sqrt(vectors.shape[1])
    queries = []
    for i in range(n):
        body = {"id": int(picks[i])} if i % 2 == 0 else {"vector": [round(float(x), 6) for x in vectors[i // 2]]}
        body.update(k=k, encoder=encoder)
        if prefilter:
            body["prefilter"] = prefilter
        queries.append(body)
    return queries


def run_in_process(coll: Collection, queries: list[dict], concurrency: int, time_limit: float) -> dict:
    def one(body):
        kwargs = dict(body)
        return [r.id for r in coll.search(**kwargs)]

    return _timed(one, queries, concurrency, time_limit, per_thread=None)


def run_http(port: int, queries: list[dict], concurrency: int, time_limit: float) -> dict:
    local = threading.local()

    def one(body):
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        local.conn.request("POST", "/api/search", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = local.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
        return [r["id"] for r in json.loads(data)["results"]]

    return _timed(one, queries, concurrency, time_limit, per_thread=local)


def _timed(one, queries, concurrency, time_limit, per_thread) -> dict:
    """Run ``one(query)`` for each query from ``concurrency`` threads; latencies, answers, errors."""
    latencies = np.full(len(queries), np.nan)
    answers: list = [None] * len(queries)
    errors: list[str] = []
    counter = iter(range(len(queries)))
    lock = threading.Lock()
    deadline = time.perf_counter() + time_limit

    def worker():
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            try:
                answers[i] = one(queries[i])
                latencies[i] = time.perf_counter() - t
            except Exception as exc:  # counted and reported; the run goes on
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                if per_thread is not None and hasattr(per_thread, "conn"):
                    per_thread.conn.close()
                    del per_thread.conn

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    done = latencies[~np.isnan(latencies)] * 1000
    # A request the time limit left unsent is a failure of the run, not a request that never existed.
    not_run = len(queries) - len(done) - len(errors)
    if not_run:
        errors.append(f"{not_run} request(s) not run before the {time_limit:.0f} s time limit")
    return {"requests": len(queries), "ok": int(len(done)), "errors": len(queries) - int(len(done)),
            "not_run": not_run, "error_samples": errors[:3], "wall_s": round(wall, 2),
            "p50_ms": round(float(np.percentile(done, 50)), 2) if len(done) else None,
            "p99_ms": round(float(np.percentile(done, 99)), 2) if len(done) else None,
            "qps": round(len(done) / wall, 1) if wall else None, "answers": answers}


def _mismatches(a: list, b: list) -> int:
    return sum(1 for x, y in zip(a, b) if x is not None and y is not None and x != y)


# -- the server -------------------------------------------------------------------------------------

class Server:
    """``nearsight serve -c COLLECTION --port 0 ARGS...`` on loopback; ``port`` read from its first line (bench_jobs
    uses it too)."""

    def __init__(self, collection: str, args: tuple[str, ...] = ()):
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        env.pop("NEARSIGHT_TOKEN", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "nearsight.server.cli", "serve", "-c", collection,
                                      "--host", "127.0.0.1", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, cwd=ROOT)
        deadline, line = time.time() + 120, ""
        while time.time() < deadline and "http://" not in line and self.proc.poll() is None:
            if select.select([self.proc.stdout], [], [], 1.0)[0]:
                line = self.proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not match:
            self.stop()
            raise SystemExit(f"nearsight serve did not start: {line!r}")
        self.port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.port}/"
        # keep draining the server's output so a full pipe never blocks it
        self.log: list[str] = []
        threading.Thread(target=lambda: self.log.extend(self.proc.stdout), daemon=True).start()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def fuzz(url: str, examples: int, seconds: int, seed: int, hooks: str | None = None,
         paths: tuple[str, str] | None = None) -> dict:
    """schemathesis against /openapi.json (all phases, one worker, ``seconds`` of budget); 5xx counted from its
    NDJSON report, in all and per operation. ``hooks``: a schemathesis hooks file (SCHEMATHESIS_HOOKS);
    ``paths``: ("include" or "exclude", regex) to fuzz part of the API."""
    exe = shutil.which("schemathesis") or os.path.join(os.path.dirname(sys.executable), "schemathesis")
    checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance," \
             "negative_data_rejection,unsupported_method"
    env = dict(os.environ, **({"SCHEMATHESIS_HOOKS": hooks} if hooks else {}))
    with tempfile.TemporaryDirectory() as report:
        cmd = [exe, "run", url + "openapi.json", "--checks", checks, "--max-examples", str(examples), "--workers", "1",
               "--seed", str(seed), "--generation-database", "none", "--request-timeout", "120", "--no-color",
               "--max-time", str(seconds), *([f"--{paths[0]}-path-regex", paths[1]] if paths else []),
               "--report", "json,ndjson", "--report-dir", report]
        start = time.perf_counter()
        try:
            # --max-time stops generating; the grace lets the last requests (a job can take a while) finish
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 180, env=env, cwd=ROOT)
            out, timed_out = proc.stdout, False
        except subprocess.TimeoutExpired as exc:
            out, timed_out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), True
        statuses: dict[int, int] = {}
        per_operation: dict[str, dict[int, int]] = {}
        queue_full = 0
        for path in glob.glob(os.path.join(report, "*.ndjson")):
            with open(path) as f:
                for line in f:
                    try:
                        event = json.loads(line).get("ScenarioFinished")
                    except json.JSONDecodeError:  # the last line of a run stopped by the timeout
                        continue
                    if not event:
                        continue
                    label = event.get("label") or event.get("recorder", {}).get("label") or "?"
                    for inter in event.get("recorder", {}).get("interactions", {}).values():
                        status = (inter.get("response") or {}).get("status_code")
                        if status is None:
                            continue
                        if status == 503 and b"queue_full" in _content(inter["response"]):
                            queue_full += 1  # the documented back-pressure answer, not a server error
                        statuses[status] = statuses.get(status, 0) + 1
                        op = per_operation.setdefault(label if label.split(" ", 1)[0].isupper() else "stateful", {})
                        op[status] = op.get(status, 0) + 1
        failures = []
        for path in glob.glob(os.path.join(report, "json-*.json")):
            with open(path) as f:
                text = f.read()
            if text.strip():  # empty when the run was killed before its end
                failures = [{"code": x["code"], "title": x["title"], "count": x["count"], "operations": x["operations"]}
                            for x in json.loads(text).get("failures", [])]
    return {"requests": sum(statuses.values()),
            "server_errors": sum(n for s, n in statuses.items() if s >= 500) - queue_full, "queue_full": queue_full,
            "statuses": dict(sorted(statuses.items())), "failures": failures, "timed_out": timed_out,
            "per_operation": {op: dict(sorted(v.items())) for op, v in sorted(per_operation.items())},
            "seconds": round(time.perf_counter() - start, 1), "summary": out.strip().splitlines()[-1:] if out else []}


# -- main -------------------------------------------------------------------------------------------

def main() -> None:
    args = parse_args()
    if args.fuzz_only:
        print(json.dumps({"bench": "serve", "fuzz": fuzz_every_encoder(args), "cpus": os.cpu_count(),
                          "loadavg": round(os.getloadavg()[0], 2)}, separators=(",", ":")))
        return
    default_dir = not args.collection
    directory = args.collection or str(ROOT / "out" / "bench_serve" / "collection")
    stamp = fixture_stamp("serve-100k", (build_fixture, _add_synthetic, _generated_photos), items=args.items,
                          encoder=args.encoder, pca_dim=args.pca_dim, seed=args.seed,
                          photos=os.path.abspath(args.photos))
    fixture = {"reused": True}
    if fixture_state(directory, stamp, default_dir) == "build" or not _answers(directory, args.encoder):
        shutil.rmtree(directory, ignore_errors=True)
        fixture = build_fixture(directory, args.photos, args.items, args.encoder, args.pca_dim, args.seed)
        fixture["reused"] = False
        write_stamp(directory, stamp)
    coll = Collection.open(directory)
    n_items = coll.count
    spec = coll.encoder_spec(args.encoder)
    queries = make_queries(coll, args.encoder, args.requests, args.k, args.seed, args.prefilter)
    exact_queries = [{k: v for k, v in q.items() if k != "prefilter"} for q in queries[:args.exact_requests]]
    mode = f"PCA pre-filter (PCA {args.pca_dim}-d shortlist of {args.prefilter}, re-ranked exactly)"
    print(f"collection {directory}: {n_items} items, encoder {args.encoder} ({spec['dim']}-d {spec['metric']})",
          flush=True)

    from nearsight.retrieval.pca import prefilter_recall

    recall = prefilter_recall(coll, args.encoder, k=args.k, shortlist=args.prefilter, n_queries=100, seed=args.seed)
    print(f"headline search mode: {mode}; its recall@{args.k} against exact search: {recall:.3f}", flush=True)
    for q in queries[:4]:  # warm-up: memory maps, the PCA projection of every item
        coll.search(**q)
    local = run_in_process(coll, queries, args.concurrency, args.time_limit)
    local_exact = run_in_process(coll, exact_queries, args.exact_concurrency, args.time_limit) if exact_queries else None
    local_seq = run_in_process(coll, queries[:args.sequential_requests], 1, args.time_limit)
    print(f"in-process  prefilter={args.prefilter}: {_line(local)}; one at a time: {_line(local_seq)}", flush=True)
    if local_exact:
        print(f"in-process  exact: {_line(local_exact)}", flush=True)

    server = Server(directory, ("--threads", str(args.server_threads)))
    try:
        warm = run_http(server.port, queries[:args.concurrency], args.concurrency, args.time_limit)
        if warm["errors"]:
            raise SystemExit(f"bench_serve: the warm-up searches failed: {warm['error_samples']}")
        remote = run_http(server.port, queries, args.concurrency, args.time_limit)
        remote_seq = run_http(server.port, queries[:args.sequential_requests], 1, args.time_limit)
        print(f"HTTP        prefilter={args.prefilter}: {_line(remote)}; one at a time: {_line(remote_seq)}", flush=True)
        remote_exact = run_http(server.port, exact_queries, args.exact_concurrency, args.time_limit) if exact_queries else None
        if remote_exact:
            print(f"HTTP        exact: {_line(remote_exact)}", flush=True)
        alive = server.proc.poll() is None
    finally:
        server.stop()

    result = {
        "bench": "serve", "items": n_items, "encoder": args.encoder, "dim": spec["dim"], "k": args.k,
        "headline_mode": mode, "mode": f"pca{args.pca_dim}-prefilter{args.prefilter}",
        "prefilter_recall_at_k": round(recall, 4),
        "concurrency": args.concurrency, "server": f"waitress threads={args.server_threads}",
        "http": _public(remote), "in_process": _public(local),
        "http_over_in_process_p50": _ratio(remote["p50_ms"], local["p50_ms"]),
        "http_over_in_process_p99": _ratio(remote["p99_ms"], local["p99_ms"]),
        "throughput_http_over_in_process": _ratio(remote["qps"], local["qps"]),
        "result_mismatches": _mismatches(remote["answers"], local["answers"]),
        "sequential": {"http": _public(remote_seq), "in_process": _public(local_seq),
                       "http_over_in_process_p50": _ratio(remote_seq["p50_ms"], local_seq["p50_ms"]),
                       "http_cost_p50_ms": _diff(remote_seq["p50_ms"], local_seq["p50_ms"])},
        "exact": None if not exact_queries else {
            "concurrency": args.exact_concurrency, "http": _public(remote_exact), "in_process": _public(local_exact),
            "http_over_in_process_p50": _ratio(remote_exact["p50_ms"], local_exact["p50_ms"]),
            "result_mismatches": _mismatches(remote_exact["answers"], local_exact["answers"])},
        "server_alive_after": alive, "fixture": fixture, "cpus": os.cpu_count(),
        "loadavg": round(os.getloadavg()[0], 2),
    }
    if not args.no_fuzz:
        result["fuzz"] = fuzz_every_encoder(args)
    print(json.dumps(result, separators=(",", ":")))


def fuzz_every_encoder(args) -> dict:
    """schemathesis against a server of the small every-encoder collection (built or reused)."""
    default_dir = not args.fuzz_collection
    directory = args.fuzz_collection or str(ROOT / "out" / "bench_serve" / "every-encoder")
    captioned = os.path.join(os.path.dirname(os.path.abspath(args.photos)), "captioned.tsv")
    params = {"photos": os.path.abspath(args.photos), "captioned": captioned, "n_photos": 24, "n_captioned": 64}
    stamp = fixture_stamp("serve-fuzz", (build_fuzz_fixture,), encoders=list(FUZZ_ENCODERS), clip=BENCH_CLIP,
                          **params)
    built = None
    if fixture_state(directory, stamp, default_dir) == "build":
        built = build_fuzz_fixture(directory, args.photos, captioned, params["n_photos"], params["n_captioned"])
        write_stamp(directory, stamp)
    coll = Collection.open(directory)
    try:
        encoders, items = list(coll.encoder_names), coll.count
    finally:
        coll.close()
    missing = _missing_encoders(encoders, directory)
    print(f"fuzz collection {directory}: {items} items, encoders {', '.join(encoders)}"
          + (f"; registered encoders it lacks: {', '.join(missing)}" if missing else ""), flush=True)
    hooks = str(ROOT / "scripts" / "serve_fuzz_hooks.py")
    # A deeper job queue: schemathesis sends async jobs faster than the workers run them, and a full queue
    # (503 queue_full, counted apart) stops the methods being reached; not so deep that a waiting request
    # outlives schemathesis's 120 s request timeout behind the backlog.
    server = Server(directory, ("--threads", "4", "--heavy-workers", "2", "--job-queue", "32", "--feedback"))
    try:
        # A budget per image method and one for the other routes: the methods answer in seconds (a job each),
        # and schemathesis spends a shared budget in order (the coverage phase of the first operations), so a
        # shared one leaves the later methods with a handful of requests.
        each = max(1, round(args.fuzz_seconds * 2 / 3 / len(IMAGE_METHODS)))
        runs = [fuzz(server.url, args.fuzz_examples, each, args.seed, hooks, ("include", f"^/api/{m}$"))
                for m in IMAGE_METHODS]
        runs.append(fuzz(server.url, args.fuzz_examples, max(1, round(args.fuzz_seconds / 3)), args.seed, hooks,
                         ("exclude", IMAGE_METHOD_PATHS)))
        fuzzed = _merge_fuzz(runs)
        alive = server.proc.poll() is None
    finally:
        server.stop()
        # what --feedback recorded from fuzzed requests: the cached fixture stays as it was built
        if os.path.exists(os.path.join(directory, "feedback.jsonl")):
            os.remove(os.path.join(directory, "feedback.jsonl"))
    print(f"schemathesis: {fuzzed['requests']} requests, statuses {fuzzed['statuses']}, 5xx {fuzzed['server_errors']}"
          f" (besides {fuzzed['queue_full']} 503 queue_full)"
          f"{' (timed out)' if fuzzed['timed_out'] else ''}, failed checks {fuzzed['failures']}", flush=True)
    for op, statuses in fuzzed["per_operation"].items():
        print(f"  {op:40s} {statuses}", flush=True)
    # The server's own account of any 5xx: its log's tracebacks (a stateful chain is hard to replay by hand).
    log = "".join(server.log)
    tracebacks = [log[i:i + 2000] for i in [m.start() for m in re.finditer("Traceback", log)][:3]]
    for tb in tracebacks:
        print("server traceback:", tb, flush=True)
    return {"collection_items": items, "encoders": encoders, "encoders_missing": missing, "built": built,
            **{k: v for k, v in fuzzed.items() if k != "summary"}, "server_alive_after": alive,
            "server_tracebacks": tracebacks}


IMAGE_METHODS = ("complete", "colorize", "recolor", "jobs")
IMAGE_METHOD_PATHS = "^/api/(complete|colorize|recolor|jobs)$"


def _content(response: dict) -> bytes:
    """A response body from schemathesis's NDJSON report (base64 under "$base64", or plain text)."""
    import base64

    body = response.get("content") or b""
    if isinstance(body, dict) and "$base64" in body:
        return base64.b64decode(body["$base64"])
    return body.encode() if isinstance(body, str) else bytes(body)


def _merge_fuzz(runs: list[dict]) -> dict:
    out = {"requests": sum(r["requests"] for r in runs), "server_errors": sum(r["server_errors"] for r in runs),
           "queue_full": sum(r["queue_full"] for r in runs),
           "statuses": {}, "failures": [f for r in runs for f in r["failures"]],
           "timed_out": any(r["timed_out"] for r in runs), "per_operation": {},
           "seconds": round(sum(r["seconds"] for r in runs), 1), "summary": [s for r in runs for s in r["summary"]]}
    for r in runs:
        for status, n in r["statuses"].items():
            out["statuses"][status] = out["statuses"].get(status, 0) + n
        for op, statuses in r["per_operation"].items():
            merged = out["per_operation"].setdefault(op, {})
            for status, n in statuses.items():
                merged[status] = merged.get(status, 0) + n
    out["statuses"] = dict(sorted(out["statuses"].items()))
    return out


def _answers(directory: str, encoder: str) -> bool:
    """Whether a reused fixture still opens and answers a pre-filter and an exact search (else: rebuilt)."""
    from nearsight.retrieval.errors import NearsightError

    if not os.path.exists(os.path.join(directory, "collection.json")):
        return False
    try:
        coll = Collection.open(directory)
        try:
            some = int(coll.embedding_matrix(encoder).ids[0])
            coll.search(id=some, k=3, encoder=encoder, prefilter=16)
            coll.search(id=some, k=3, encoder=encoder)
        finally:
            coll.close()
        return True
    except (NearsightError, OSError, KeyError, IndexError) as exc:
        print(f"fixture {directory}: does not answer ({type(exc).__name__}: {exc}), building it again", flush=True)
        return False


def _diff(a, b):
    return round(a - b, 2) if a is not None and b is not None else None


def _public(run: dict | None) -> dict | None:
    return None if run is None else {k: v for k, v in run.items() if k != "answers"}


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def _line(run: dict) -> str:
    return (f"{run['ok']}/{run['requests']} ok, {run['errors']} errors, p50 {run['p50_ms']} ms, "
            f"p99 {run['p99_ms']} ms, {run['qps']} q/s")


if __name__ == "__main__":
    main()
