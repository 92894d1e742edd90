"""Fault drills against the real command line, repeated: how many runs were tried, how many the collection
survived (it opens, is consistent, and the next run completes), and how many items were lost or doubled.

    python scripts/bench_faults.py [PHOTOS] [--kills 10] [--requests 2000] [--seed 0]

Drills: kill -9 at random moments during `index`, `build-index` and `fit-pca`; Ctrl-C (SIGINT to the process
group) and SIGTERM during `index` with decode workers; a full disk on a small tmpfs (root only, else skipped
with a message); a FIFO and a /dev/zero link named *.jpg; fuzzed HTTP requests (every answer JSON, no 500, no
server path). Each stopped run must end within 30 s. Prints one line per drill, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nearsight.retrieval.collection import Collection  # noqa: E402

CLI = [sys.executable, "-m", "nearsight.server.cli"]


def make_photos(folder: str, n: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        base = rng.uniform(0, 255, (6, 8, 3))
        img = np.kron(base, np.ones((20, 20, 1))) + rng.normal(0, 8, (120, 160, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i:04d}.jpg"), quality=90)


def check(coll_dir: str, expected: int | None = None) -> tuple[bool, int]:
    """(consistent, items lost or doubled): every live item once, with exactly one embedding per encoder."""
    if not os.path.exists(os.path.join(coll_dir, "collection.json")):
        return True, 0
    coll = Collection.open(coll_dir)
    try:
        live = {i.id for i in coll.store.iter_items() if not i.deleted}
        bad = 0
        for name in coll.encoder_names:
            ids = coll.embedding_matrix(name).ids.tolist()
            bad += (len(ids) - len(set(ids))) + len(live ^ set(ids))
        if expected is not None:
            bad += abs(expected - len(live))
        return bad == 0, bad
    finally:
        coll.close()


def run(args, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kw)


def stop_at(args, delay: float, sig: int, group: bool) -> tuple[float, int, str]:
    """Start a command, send ``sig`` after ``delay`` s; (seconds it took to end, exit status, stderr)."""
    p = subprocess.Popen(CLI + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         start_new_session=True)
    time.sleep(delay)
    (os.killpg if group else os.kill)(p.pid, sig)
    t = time.monotonic()
    try:
        _, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        _, err = p.communicate()
        return float("inf"), -1, err
    return time.monotonic() - t, p.returncode, err


class Tally:
    def __init__(self):
        self.rows = {}

    def add(self, drill: str, survived: bool, lost: int = 0, note: str = "") -> None:
        row = self.rows.setdefault(drill, {"tried": 0, "survived": 0, "lost": 0, "notes": []})
        row["tried"] += 1
        row["survived"] += int(survived)
        row["lost"] += lost
        if note and not survived:
            row["notes"].append(note[-300:])


def drill_kill9(t: Tally, work: str, photos: str, n: int, kills: int, rng: random.Random) -> None:
    for command in ("index", "build-index", "fit-pca"):
        for k in range(kills):
            coll = os.path.join(work, f"k9-{command}-{k}")
            index = ["index", photos, "-c", coll, "--encoders", "tiny,tiny-gray", "--workers", "2",
                     "--flush-every", "16", "--quiet", "--no-index"]
            if command != "index":
                run(index)
            args = {"index": index, "build-index": ["build-index", "-c", coll, "--encoder", "tiny", "--rebuild"],
                    "fit-pca": ["fit-pca", "-c", coll, "--encoder", "tiny", "--dim", "8"]}[command]
            stop_at(args, rng.uniform(0.3, 4.0), signal.SIGKILL, group=True)
            ok, _ = check(coll)
            again = run(args)
            done, lost = check(coll, expected=n)
            t.add(f"kill -9 during {command}", ok and done and again.returncode == 0, lost, again.stderr)


def drill_signals(t: Tally, work: str, photos: str, n: int, rng: random.Random) -> None:
    for name, sig, group in (("Ctrl-C (SIGINT to the group)", signal.SIGINT, True),
                             ("SIGTERM to the main process", signal.SIGTERM, False)):
        for k in range(3):
            coll = os.path.join(work, f"sig-{sig}-{k}")
            args = ["index", photos, "-c", coll, "--encoders", "tiny,gist", "--workers", "2", "--flush-every", "16",
                    "--quiet", "--no-index"]
            took, rc, err = stop_at(args, rng.uniform(1.0, 5.0), sig, group)
            lines = err.strip().splitlines()
            clean = took < 30 and (rc == 0 or (rc in (130, 143) and len(lines) == 1 and lines[0].startswith("interrupted")))
            again = run(args)
            done, lost = check(coll, expected=n)
            t.add(name, clean and done and again.returncode == 0, lost, f"rc={rc} took={took:.1f}s {err}")


def drill_disk_full(t: Tally, work: str, photos: str, n: int) -> None:
    if os.geteuid() != 0:
        print("disk full: skipped (mounting a small tmpfs needs root)")
        return
    mnt = os.path.join(work, "small")
    os.makedirs(mnt)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", mnt]).returncode != 0:
        print("disk full: skipped (mount -t tmpfs failed)")
        return
    try:
        coll = os.path.join(mnt, "c")
        args = ["index", photos, "-c", coll, "--encoders", "tiny,gist", "--workers", "2", "--flush-every", "16",
                "--quiet", "--no-index"]
        for workers in ("2", "0"):
            args[args.index("--workers") + 1] = workers
            r = run(args)
            lines = r.stderr.strip().splitlines()
            clean = r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: cannot write")
            tmp_left = [f for _, _, fs in os.walk(coll) for f in fs if f.endswith(".tmp")]
            ok, lost = check(coll)
            t.add(f"disk full (--workers {workers})", clean and ok and not tmp_left, lost, r.stderr)
        subprocess.run(["mount", "-o", "remount,size=64m", mnt], check=True)
        r = run(args)
        done, lost = check(coll, expected=n)
        t.add("disk full, then space freed: re-run", done and r.returncode == 0, lost, r.stderr)
    finally:
        subprocess.run(["umount", mnt])


def drill_special_files(t: Tally, work: str, photos: str, n: int) -> None:
    folder = os.path.join(work, "special")
    shutil.copytree(photos, folder)
    os.mkfifo(os.path.join(folder, "pipe.jpg"))
    os.symlink("/dev/zero", os.path.join(folder, "zero.jpg"))
    for workers in ("0", "2"):
        coll = os.path.join(work, f"special-c{workers}")
        try:
            r = run(["index", folder, "-c", coll, "--workers", workers, "--quiet", "--no-index"], timeout=60)
            ok = r.returncode == 0 and f"added {n}," in r.stdout and "failed 2" in r.stdout
        except subprocess.TimeoutExpired as exc:
            ok, r = False, exc
        _, lost = check(coll, expected=n)
        t.add(f"FIFO + /dev/zero named *.jpg (--workers {workers})", ok, lost, str(getattr(r, "stderr", r)))


def drill_requests(t: Tally, work: str, photos: str, count: int, rng: random.Random) -> None:
    from nearsight.server.app import ServerConfig, create_app

    coll = os.path.join(work, "served")
    run(["index", photos, "-c", coll, "--workers", "0", "--quiet"])
    app = create_app(ServerConfig(coll, token=None, max_upload_bytes=50_000))
    client = app.test_client()
    atoms = [None, True, 0, -1, 2 ** 70, 1.5, float("nan"), "", "x" * 5000, "/etc/passwd", "data:,", [], {}]
    fields = ["id", "text", "image", "vector", "query", "k", "offset", "encoder", "prefilter", "filter", "zzz"]

    def value(depth=0):
        roll = rng.random()
        if depth < 3 and roll < 0.2:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        if depth < 3 and roll < 0.35:
            return {rng.choice(fields): value(depth + 1) for _ in range(rng.randint(0, 3))}
        return rng.choice(atoms)

    routes = ["/api/search", "/api/search", "/api/complete", "/api/colorize", "/api/recolor"]
    for i in range(count):
        kind = rng.random()
        headers = {"Host": rng.choice(["localhost", "localhost", "evil.example"])}
        if kind < 0.05:
            body, ctype = "[" * rng.randint(500, 60_000), "application/json"
        elif kind < 0.1:
            body, ctype = os.urandom(rng.randint(0, 2000)), rng.choice(["application/json", "multipart/form-data"])
        else:
            body = json.dumps({rng.choice(fields): value() for _ in range(rng.randint(0, 4))}, allow_nan=True)
            ctype = "application/json"
        r = client.post(rng.choice(routes), data=body, content_type=ctype, headers=headers)
        text = r.get_data(as_text=True)
        good = r.status_code < 500 and (r.status_code < 400 or (r.is_json and "error" in r.get_json())) \
            and coll not in text and "Traceback" not in text
        t.add("fuzzed requests", good, 0, f"{r.status_code} {text[:200]}")
    app.extensions["nearsight"].holder.collection.close()
    jobs = app.extensions.get("nearsight.jobs")
    if jobs is not None:
        jobs.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", nargs="?", help="folder of photos (default: 48 generated ones)")
    ap.add_argument("--kills", type=int, default=10, help="kill -9 drills per command")
    ap.add_argument("--requests", type=int, default=2000, help="fuzzed HTTP requests")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    start = time.time()
    t = Tally()
    with tempfile.TemporaryDirectory(prefix="bench_faults_") as work:
        photos = os.path.join(work, "photos")
        if a.photos:
            shutil.copytree(a.photos, photos)
        else:
            make_photos(photos, 48, a.seed)
        n = sum(1 for f in os.listdir(photos) if f.lower().endswith((".jpg", ".jpeg", ".png")))
        drill_kill9(t, work, photos, n, a.kills, rng)
        drill_signals(t, work, photos, n, rng)
        drill_disk_full(t, work, photos, n)
        drill_special_files(t, work, photos, n)
        drill_requests(t, work, photos, a.requests, rng)
    for drill, row in t.rows.items():
        print(f"{drill:45s} tried {row['tried']:5d}  survived {row['survived']:5d}  lost {row['lost']}")
        for note in row["notes"][:3]:
            print(f"    {note.strip()}")
    total = {k: sum(r[k] for r in t.rows.values()) for k in ("tried", "survived", "lost")}
    print(json.dumps({"bench": "faults", **total, "seconds": round(time.time() - start, 1),
                      "drills": {d: {k: r[k] for k in ("tried", "survived", "lost")} for d, r in t.rows.items()}}))


if __name__ == "__main__":
    main()
