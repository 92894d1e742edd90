#!/usr/bin/env python
"""Scale: a collection grown to N items (default 10k -> 100k -> 1M) through the real ingest, then measured.

1. Generated small photos (56x56 JPEGs: the repo's Fashion-MNIST samples tinted, mirrored, shifted, seeded by
   item number, ``fashion_photos``) are written to disk in folders of 10,000 (about a thousand a second a
   core), and indexed with ``nearsight index --encoders tiny --no-index``
   in steps up to each size in ``--sizes``: images/s of each step (the last ones must be within 10% of the
   first: no slow-down with size) and its peak memory, summed over the process tree, sampled every 50 ms: RSS,
   and the anonymous part alone (proportional: pages a forked worker shares with its parent count once). RSS also
   counts the clean pages of the LMDB store's memory map (LMDB reads each page through the map when a write
   transaction changes it, so the mapped pages grow with the store): page cache the kernel takes back under
   pressure, not memory the ingest holds.
2. At the largest size: disk bytes per item, ``nearsight build-index --encoder tiny`` time and peak RSS, the
   time of ``nearsight info`` and of opening the collection (a fresh process each).
3. ``nearsight serve`` on loopback, once for each of ``--http`` (waitress, granian) and ``--server-processes``
   (default 1 and one per core), the same requests to each: the baseline is waitress in one process;
   ``--queries`` searches (k=10) at concurrency ``--concurrency`` by id, then by uploaded image: p50 / p99
   latency and queries/s, errors counted (must be 0);
   from the Python client below, then the same requests for ``--wrk-seconds`` from wrk, a C client whose own
   CPU takes less from the two shared cores, with the server's CPU time a request.
4. ``--gist-slice N``: the first N photos indexed again with ``gist`` into a second collection (images/s).
5. ``--baseline-index FOLDER``: single searches in one process through the collection's index and another
   saved index of the same vectors (``FOLDER/indexes/``), interleaved, with their recall against exact search.

The baseline measured in the same run is the first step's ingest rate: later steps are reported as its ratio.

    nice python scripts/bench_scale.py --out /tmp/scale [--sizes 10000,100000,1000000] [--gist-slice 100000]
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import psutil
from PIL import Image

FOLDER = 10_000
PY = sys.executable
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


# -- photos ------------------------------------------------------------------------------------------------------
# Items are Fashion-MNIST samples shipped in the repo (2,000 28x28 grays), each made distinct: a two-colour tint,
# a mirror and a shift drawn from the item number, 2x upscaled, small noise; made a folder at a time with numpy,
# so writing the JPEGs is most of the cost (the former per-item drawing ran at ~20 items/s on a busy machine).
FASHION = os.path.join(ROOT, "data", "samples", "fashion-mnist")
SIDE = 56
_BASES = None


def fashion_bases() -> np.ndarray:
    """(m, 28, 28) uint8: every Fashion-MNIST sample PNG of the repo, in a fixed shuffled order."""
    global _BASES
    if _BASES is None:
        paths = sorted(os.path.join(d, f) for d, _, files in os.walk(FASHION) for f in files if f.endswith(".png"))
        if not paths:
            raise SystemExit(f"no Fashion-MNIST sample PNGs under {FASHION}")
        bases = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.uint8) for p in paths])
        _BASES = bases[np.random.default_rng(0).permutation(len(bases))]    # classes interleaved, not in runs
    return _BASES


def fashion_photos(start: int, count: int) -> np.ndarray:
    """(count, 56, 56, 3) uint8 items start .. start + count - 1, the same for the same numbers on every run."""
    bases = fashion_bases()
    items = np.arange(start, start + count)
    rng = np.random.default_rng([start, count])
    x = bases[items % len(bases)].astype(np.float32) / 255.0                      # (c, 28, 28)
    flip = rng.random(count) < 0.5
    x[flip] = x[flip, :, ::-1]
    shifts = rng.integers(-3, 4, (count, 2))
    for dy in range(-3, 4):       # a roll per distinct shift, not per item
        for dx in range(-3, 4):
            sel = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            if sel.any():
                x[sel] = np.roll(x[sel], (dy, dx), axis=(1, 2))
    dark = rng.uniform(0, 120, (count, 1, 1, 3)).astype(np.float32)
    light = rng.uniform(135, 255, (count, 1, 1, 3)).astype(np.float32)
    rgb = dark + x[..., None] * (light - dark)                                    # (c, 28, 28, 3)
    rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * 3
    # upscaled last, as uint8: a quarter of the arithmetic
    return np.clip(rgb, 0, 255).astype(np.uint8).repeat(2, axis=1).repeat(2, axis=2)


def make_photo(seed: int) -> Image.Image:
    """One generated item (query images use numbers past the collection's)."""
    return Image.fromarray(fashion_photos(seed, 1)[0])


def _write_folder(args) -> str:
    root, index = args
    folder = os.path.join(root, f"f{index:04d}")
    done = os.path.join(folder, ".done")
    if not os.path.exists(done):
        os.makedirs(folder, exist_ok=True)
        for i, pixels in enumerate(fashion_photos(index * FOLDER, FOLDER), start=index * FOLDER):
            Image.fromarray(pixels).save(os.path.join(folder, f"{i:07d}.jpg"), quality=85)
        open(done, "w").close()
    return folder


def photo_folders(root: str, n: int, workers: int) -> list[str]:
    """Folders of FOLDER photos each, n // FOLDER of them (made once, reused by later runs)."""
    with multiprocessing.Pool(workers) as pool:
        return pool.map(_write_folder, [(root, i) for i in range(n // FOLDER)], chunksize=1)


# -- processes ---------------------------------------------------------------------------------------------------
def anonymous_bytes(pid: int) -> int:
    """Proportional anonymous memory of a process (``Pss_Anon`` of /proc/PID/smaps_rollup); 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss_Anon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def timed(cmd: list[str]) -> tuple[float, dict, str]:
    """(seconds, {"rss": peak RSS, "anonymous": peak anonymous memory} of the process tree in bytes, stdout) of a
    command that must succeed."""
    start = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    peak = {"rss": 0, "anonymous": 0}
    anon_read = 0.0     # smaps_rollup walks the page tables: read every 0.5 s (it cost 40% of a core at 7 GB)
    out_chunks = []
    reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            tree = [p for p in [proc] + proc.children(recursive=True) if p.is_running()]
            peak["rss"] = max(peak["rss"], sum(p.memory_info().rss for p in tree))
            if time.perf_counter() - anon_read >= 0.5:
                anon_read = time.perf_counter()
                peak["anonymous"] = max(peak["anonymous"], sum(anonymous_bytes(p.pid) for p in tree))
        except psutil.Error:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    reader.join()
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-2000:]}")
    return seconds, peak, "".join(out_chunks)


def memory_fields(peak: dict) -> dict:
    return {"peak_rss_mb": round(peak["rss"] / 2**20, 1), "peak_anonymous_mb": round(peak["anonymous"] / 2**20, 1)}


def nearsight(*args: str) -> list[str]:
    return [PY, "-m", "nearsight.server.cli", *args]


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


# -- HTTP --------------------------------------------------------------------------------------------------------
def start_server(collection: str, processes: int = 1, http: str = "waitress"):
    proc = subprocess.Popen(nearsight("serve", "-c", collection, "--port", "0", "--threads", "16",
                                      "--processes", str(processes), "--http", http),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    for line in proc.stdout:
        m = re.search(r"http://([^/]+):(\d+)/", line)
        if m:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc, m.group(1).strip("[]"), int(m.group(2))
    raise SystemExit(f"serve did not start: {proc.wait()}")


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU of a server and its processes so far."""
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def load(host: str, port: int, requests: list[tuple[str, bytes, str]], concurrency: int) -> dict:
    latencies, errors, lock = [], [0], threading.Lock()
    queue = list(enumerate(requests))

    def worker():
        conn = http.client.HTTPConnection(host, port, timeout=60)
        while True:
            with lock:
                if not queue:
                    break
                _, (path, body, ctype) = queue.pop()
            start = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": ctype})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn = http.client.HTTPConnection(host, port, timeout=60)
            with lock:
                latencies.append(time.perf_counter() - start)
                errors[0] += not ok

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "queries_per_s": round(len(ms) / wall, 1), "errors": errors[0], "n": len(ms)}


# wrk (C, epoll): a load client that costs the shared cores ~10x less CPU a request than the Python one above
# (~0.5 ms a request, with its own GIL waits inside the measured latency). Both run on the same requests.
WRK_SCRIPT = r"""
local bodies, types, i = {}, {}, 0
local dir, count, threads = "%s", %d, 0
setup = function(thread) thread:set("offset", threads); threads = threads + 1 end
init = function(args)
  for k = 1, count do
    local f = io.open(string.format("%%s/%%06d", dir, k - 1), "rb")
    types[k] = f:read("*l"); bodies[k] = f:read("*a"); f:close()
  end
  i = (offset or 0) * math.floor(count / 2)
end
request = function()
  i = i %% count + 1
  return wrk.format("POST", "/api/search", {["Content-Type"] = types[i]}, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"p50_us": %%d, "p99_us": %%d, "requests": %%d, "duration_us": %%d, "errors": %%d}\n',
    latency:percentile(50), latency:percentile(99), summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout + e.status))
end
"""


def wrk_binary(data_dir: str) -> list[str]:
    """The command prefix of wrk: on PATH, or Debian's package (with LuaJIT) fetched into ``data_dir`` with
    ``apt-get download`` and unpacked with ``dpkg -x``, no system install."""
    import glob
    import shutil

    if shutil.which("wrk"):
        return ["wrk"]
    root = os.path.join(data_dir, "root")
    exe = os.path.join(root, "usr", "bin", "wrk")
    if not os.path.exists(exe):
        os.makedirs(data_dir, exist_ok=True)
        subprocess.run(["apt-get", "download", "wrk", "libluajit-5.1-2"], cwd=data_dir, check=True)
        for deb in glob.glob(os.path.join(data_dir, "*.deb")):
            subprocess.run(["dpkg", "-x", deb, root], check=True)
    return ["env", f"LD_LIBRARY_PATH={os.path.join(root, 'usr', 'lib', 'x86_64-linux-gnu')}", exe]


def load_wrk(wrk: list[str], host: str, port: int, requests: list[tuple[str, bytes, str]], concurrency: int,
             seconds: float, work: str) -> dict:
    """The same requests (in turn, each wrk thread from its own point) for ``seconds`` through wrk's
    ``concurrency`` connections on one thread a core: the same fields as ``load``."""
    bodies = os.path.join(work, "wrk-bodies")
    os.makedirs(bodies, exist_ok=True)
    for i, (path, body, ctype) in enumerate(requests):
        assert path == "/api/search"
        with open(os.path.join(bodies, f"{i:06d}"), "wb") as f:
            f.write(ctype.encode() + b"\n" + body)
    script = os.path.join(work, "wrk-search.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT % (bodies, len(requests)))
    threads = min(os.cpu_count(), concurrency)
    out = subprocess.run([*wrk, "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds:g}s", "--timeout", "60s",
                          "-s", script, f"http://{host}:{port}/"], capture_output=True, text=True, check=True).stdout
    r = json.loads(out.split("WRK ", 1)[1].splitlines()[0])
    if not r["requests"]:
        raise SystemExit(f"wrk completed no request in {seconds:g} s")
    return {"p50_ms": round(r["p50_us"] / 1000, 1), "p99_ms": round(r["p99_us"] / 1000, 1),
            "queries_per_s": round(r["requests"] / (r["duration_us"] / 1e6), 1), "errors": r["errors"],
            "n": r["requests"], "client": "wrk"}


def multipart(image: bytes, fields: dict) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode()
             for k, v in fields.items()]
    parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.jpg\"\r\n"
                 f"Content-Type: image/jpeg\r\n\r\n".encode() + image + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def gist_slice(args, folders: list[str]) -> dict:
    """The first ``--gist-slice`` photos indexed with gist into their own collection: images/s, peak memory."""
    gist_coll = os.path.join(args.out, f"gist-{args.gist_slice}")
    if os.path.exists(gist_coll):
        raise SystemExit(f"{gist_coll} exists; remove it to measure ingest from empty")
    seconds, peak, _ = timed(nearsight("index", *folders[:args.gist_slice // FOLDER], "-c", gist_coll,
                                       "--encoders", "gist", "--no-index", "--quiet", "--workers", str(args.workers)))
    print(f"gist on {args.gist_slice:,}: {args.gist_slice / seconds:.1f} images/s, peak RSS "
          f"{peak['rss'] / 2**20:.0f} MB (anonymous {peak['anonymous'] / 2**20:.0f} MB)")
    return {"items": args.gist_slice, "images_per_s": round(args.gist_slice / seconds, 1), **memory_fields(peak)}


# -- main --------------------------------------------------------------------------------------------------------
def index_vs_baseline(coll: str, baseline_dir: str, queries: int = 1000, truth_queries: int = 200,
                      rounds: int = 3) -> dict:
    """Single searches by random items' vectors through the collection's index and a baseline index of the
    same vectors, interleaved in rounds (the first round of each reads its files cold), one thread; recall@10
    against exact search on the first ``truth_queries``."""
    import faiss
    from nearsight.retrieval.collection import Collection
    from nearsight.retrieval.index import load_index
    from nearsight.retrieval.index.tuning import exact_knn, recall_at_k

    c = Collection.open(coll)
    matrix = c.embedding_matrix("tiny")
    indexes = {"index": load_index(coll, "tiny", matrix, metric="ip"),
               "baseline": load_index(baseline_dir, "tiny", matrix, metric="ip")}
    ids = np.random.default_rng(1).integers(0, len(matrix), queries)
    q = matrix.reconstruct(matrix.ids[ids]).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    truth = exact_knn(q[:truth_queries], matrix.vectors, matrix.ids, 10, "ip")[1]
    faiss.omp_set_num_threads(1)
    out = {name: {"factory": index.factory, "ms": []} for name, index in indexes.items()}
    for _ in range(rounds):
        for name, index in indexes.items():
            start = time.perf_counter()
            found = np.concatenate([index.search(q[i:i + 1], 10)[1] for i in range(queries)])
            out[name]["ms"].append(round((time.perf_counter() - start) / queries * 1000, 3))
            out[name]["recall_at_10"] = round(recall_at_k(found[:truth_queries], truth, 10), 3)
    for name, r in out.items():
        print(f"{name} {r['factory']}: single search {r['ms']} ms per round (first cold), "
              f"recall@10 {r['recall_at_10']}")
    warm = lambda name: float(np.median(out[name]["ms"][1:] or out[name]["ms"]))
    out["baseline_over_index_warm"] = round(warm("baseline") / warm("index"), 2)
    print(f"baseline / index, warm rounds: {out['baseline_over_index_warm']}x")
    c.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="work folder: photos/ (kept for reruns) and the collections")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--server-processes", default=f"1,{os.cpu_count()}",
                    help="serve --processes values to measure, each with the same requests")
    ap.add_argument("--http", default="waitress,granian", help="serve --http servers to measure, each with each "
                    "--server-processes value (the first pair is the baseline)")
    ap.add_argument("--wrk-seconds", type=float, default=10.0,
                    help="also load each server with wrk (Debian's, fetched if missing) for this long; 0: not")
    ap.add_argument("--gist-slice", type=int, default=0)
    ap.add_argument("--gist-only", action="store_true", help="only the gist slice (its photos made if missing)")
    ap.add_argument("--reuse", action="store_true",
                    help="measure from the index build on, over the collection an earlier run ingested")
    ap.add_argument("--baseline-index", default="",
                    help="a folder holding indexes/ with another saved index of the same collection (hard links "
                         "of the files before a rebuild): single searches through both, interleaved, in one process")
    args = ap.parse_args()
    if args.gist_only:
        if not args.gist_slice or args.gist_slice % FOLDER:
            raise SystemExit(f"--gist-only needs --gist-slice, a multiple of {FOLDER}")
        folders = photo_folders(os.path.join(args.out, "photos"), args.gist_slice, args.workers)
        print(json.dumps({"bench": "scale", "cores": os.cpu_count(), "gist_slice": gist_slice(args, folders),
                          "load_average_1m": round(os.getloadavg()[0], 2)}))
        return
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if any(s % FOLDER for s in sizes):
        raise SystemExit(f"sizes must be multiples of {FOLDER}")
    photos = os.path.join(args.out, "photos")
    coll = os.path.join(args.out, f"tiny-{sizes[-1]}")
    if os.path.exists(coll) and not args.reuse:
        raise SystemExit(f"{coll} exists; remove it to measure ingest from empty (or --reuse it)")
    if args.reuse and not os.path.exists(coll):
        raise SystemExit(f"--reuse: no collection {coll} to reuse")

    start = time.perf_counter()
    folders = photo_folders(photos, sizes[-1], args.workers)
    made = time.perf_counter() - start
    print(f"photos: {sizes[-1]:,} {SIDE}x{SIDE} JPEGs ready in {made:.0f} s ({sizes[-1] / made:.0f}/s, with any "
          "folders already made by an earlier run)")

    steps, done = [], 0
    for size in [] if args.reuse else sizes:
        new = folders[done // FOLDER:size // FOLDER]
        seconds, peak, _ = timed(nearsight("index", *new, "-c", coll, "--encoders", "tiny", "--no-index",
                                           "--quiet", "--workers", str(args.workers)))
        rate = (size - done) / seconds
        steps.append({"items": size, "added": size - done, "images_per_s": round(rate, 1),
                      "to_first_step": round(rate / (steps[0]["images_per_s"] if steps else rate), 2),
                      **memory_fields(peak)})
        print(f"ingest to {size:>9,} items: {rate:8.1f} images/s ({steps[-1]['to_first_step']}x the first step), "
              f"peak RSS {peak['rss'] / 2**20:7.1f} MB, anonymous {peak['anonymous'] / 2**20:7.1f} MB")
        done = size

    n = sizes[-1]
    result = {"bench": "scale", "items": n, "cores": os.cpu_count(), "ingest": steps,
              "disk_bytes_per_item": round(dir_bytes(coll) / n, 1)}
    seconds, peak, _ = timed(nearsight("build-index", "-c", coll, "--encoder", "tiny"))
    result["index_build"] = {"seconds": round(seconds, 1), **memory_fields(peak)}
    result["info_seconds"] = round(timed(nearsight("info", "-c", coll))[0], 2)
    opener = f"from nearsight.retrieval.collection import Collection; c = Collection.open({coll!r}); c.count; c.close()"
    result["open_seconds"] = round(timed([PY, "-c", opener])[0], 2)
    print(f"disk {result['disk_bytes_per_item']} B/item; build-index {seconds:.1f} s, peak RSS {peak['rss'] / 2**20:.0f} MB "
          f"(anonymous {peak['anonymous'] / 2**20:.0f} MB); "
          f"info {result['info_seconds']} s; open {result['open_seconds']} s (fresh processes)")

    rng = np.random.default_rng(0)
    by_id = [("/api/search", json.dumps({"id": int(i), "k": 10, "encoder": "tiny"}).encode(), "application/json")
             for i in rng.integers(0, n, args.queries)]
    by_image = []
    for seed in rng.integers(n, 10**9, args.queries):     # items the collection does not hold
        out = io.BytesIO()
        make_photo(int(seed)).save(out, format="JPEG", quality=85)
        body, ctype = multipart(out.getvalue(), {"k": "10", "encoder": "tiny"})
        by_image.append(("/api/search", body, ctype))
    result["http"] = []
    wrk = wrk_binary(os.path.join(ROOT, "data", "wrk")) if args.wrk_seconds else None
    servers = [(front, processes) for front in args.http.split(",")
               for processes in sorted({int(p) for p in args.server_processes.split(",")})]
    for front, processes in servers:
        server, host, port = start_server(coll, processes, front)
        try:
            # one unmeasured pass of the same requests first: every process's index and encoder loaded, and the
            # rows they touch in the page cache for each configuration alike (the first one otherwise pays it)
            load(host, port, by_id, args.concurrency)
            load(host, port, by_image, args.concurrency)
            entry = {"http": front, "processes": processes,
                     "search_by_id": load(host, port, by_id, args.concurrency),
                     "search_by_image": load(host, port, by_image, args.concurrency)}
            if wrk:
                for kind, requests in (("wrk_search_by_id", by_id), ("wrk_search_by_image", by_image)):
                    cpu = server_cpu_seconds(server.pid)
                    entry[kind] = load_wrk(wrk, host, port, requests, args.concurrency, args.wrk_seconds, args.out)
                    entry[kind]["server_cpu_ms"] = round((server_cpu_seconds(server.pid) - cpu)
                                                         / entry[kind]["n"] * 1000, 2)
        finally:
            server.terminate()
            server.wait()
        result["http"].append(entry)
        for kind in [k for k in ("search_by_id", "search_by_image", "wrk_search_by_id", "wrk_search_by_image")
                     if k in entry]:
            r = entry[kind]
            print(f"{kind} over HTTP, {front}, {processes} server process(es), concurrency {args.concurrency}: p50 "
                  f"{r['p50_ms']} ms, p99 {r['p99_ms']} ms, {r['queries_per_s']} q/s, {r['errors']} errors of {r['n']}"
                  + (f", server {r['server_cpu_ms']} CPU-ms a request" if "server_cpu_ms" in r else ""))
    base = result["http"][0]
    kinds = [k for k in ("search_by_id", "search_by_image", "wrk_search_by_id", "wrk_search_by_image") if k in base]
    for entry in result["http"][1:]:
        entry["vs_first"] = {kind: round(entry[kind]["queries_per_s"] / base[kind]["queries_per_s"], 2)
                             for kind in kinds}
        print(f"{entry['http']} x{entry['processes']} vs {base['http']} x{base['processes']}: {entry['vs_first']} "
              "(queries/s)")

    if args.gist_slice:
        result["gist_slice"] = gist_slice(args, folders)
    if args.baseline_index:
        result["index_vs_baseline"] = index_vs_baseline(coll, args.baseline_index)
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
