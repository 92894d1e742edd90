"""lear-gist, the C reference of GIST (Douze et al., INRIA), built here and run as a subprocess for bench_gist.py.

The library's C sources ship in the ``pyleargist`` sdist on PyPI (its Python 2 setup.py cannot be run, so
the archive is fetched through PyPI's simple index, its sha256 checked, and only ``lear_gist/*.c`` are used); single-precision FFTW3
comes from Debian's packages, fetched with ``apt-get download`` and unpacked with ``dpkg -x`` into the
cache (nothing is installed on the system). ``scripts/lear_gist_driver.c`` calls ``color_gist_scaletab``
unmodified. Everything lands under ``out/lear_gist/`` and is reused while the sources and flags are
the same; any step that cannot be done raises ``ReferenceUnavailable`` with one line saying which.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "lear_gist_driver.c"
CACHE = HERE.parent / "out" / "lear_gist"
SDIST = ("pyleargist", "2.0.5")
SDIST_SHA256 = "212d932d756799071bb31daa6c03457e65238d461fa15598d6f849be0adac8ec"  # as PyPI lists it
PYPI_SIMPLE = "https://pypi.org/simple"
FFTW_DEBS = ("libfftw3-dev", "libfftw3-single3", "libfftw3-double3")
CFLAGS = ("-O3", "-DUSE_GIST", "-DSTANDALONE_GIST", "-pthread")


class ReferenceUnavailable(RuntimeError):
    """lear-gist could not be fetched or built; the message is one line saying which step and why."""


def build(cache: Path = CACHE) -> Path:
    """Path of the built driver, building it (and fetching its sources) on the first call."""
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(DRIVER.read_bytes() + " ".join(CFLAGS).encode() + "-".join(SDIST).encode()).hexdigest()[:16]
    binary = cache / f"lear_gist_driver-{key}"
    if binary.exists():
        return binary
    if shutil.which("gcc") is None:
        raise ReferenceUnavailable("lear-gist: no gcc on PATH to compile the reference with")
    sources = _sdist_sources(cache / "sdist")
    include, library = _fftw(cache / "fftw")
    tmp = binary.with_suffix(".tmp")
    cmd = ["gcc", *CFLAGS, "-I", str(sources), "-I", str(include), str(DRIVER), str(sources / "gist.c"),
           str(sources / "standalone_image.c"), str(library), f"-Wl,-rpath,{library.parent}", "-lm", "-o", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ReferenceUnavailable(f"lear-gist: gcc failed: {last}")
    os.replace(tmp, binary)
    for stale in cache.glob("lear_gist_driver-*"):  # builds of an older driver or older flags
        if stale != binary:
            stale.unlink()
    return binary


def _download(url: str, path: Path, timeout: float = 60) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as f:
            shutil.copyfileobj(response, f)
    except OSError as exc:
        raise ReferenceUnavailable(f"lear-gist: cannot download {url}: {exc}") from None


def _sdist_sources(folder: Path) -> Path:
    """``lear_gist/`` of the pyleargist sdist (gist.c, gist.h, standalone_image.c/.h), fetched once."""
    done = folder / "lear_gist"
    if (done / "gist.c").exists():
        return done
    folder.mkdir(parents=True, exist_ok=True)
    name, version = SDIST
    filename = f"{name}-{version}.tar.gz"
    # PyPI's simple index, as pip reads it: the archive's link, with its sha256 after '#'.
    index_path = folder / "index.html"
    _download(f"{PYPI_SIMPLE}/{name}/", index_path)
    links = re.findall(r'href="([^"]+)"', index_path.read_text())
    url = next((link for link in links if link.split("#")[0].endswith("/" + filename)), None)
    if url is None:
        raise ReferenceUnavailable(f"lear-gist: PyPI's index for {name} has no {filename}")
    archive = folder / filename
    _download(url.split("#")[0], archive)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise ReferenceUnavailable(f"lear-gist: {filename} has sha256 {digest}, expected {SDIST_SHA256}")
    staging = Path(tempfile.mkdtemp(dir=folder))
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and "/lear_gist/" in f"/{m.name}"]
        if not members:
            raise ReferenceUnavailable(f"lear-gist: {archive.name} has no lear_gist/ folder")
        for m in members:
            target = staging / Path(m.name).name
            with tar.extractfile(m) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    for needed in ("gist.c", "gist.h", "standalone_image.c", "standalone_image.h"):
        if not (staging / needed).exists():
            raise ReferenceUnavailable(f"lear-gist: {archive.name} lacks lear_gist/{needed}")
    os.replace(staging, done)
    return done


def _fftw(folder: Path) -> tuple[Path, Path]:
    """(include dir, path of libfftw3f.so.3) from Debian's packages unpacked under ``folder``."""
    root = folder / "root"
    found = _fftw_paths(root)
    if found:
        return found
    debs = folder / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise ReferenceUnavailable("lear-gist: FFTW3 comes from Debian packages here and this machine has no "
                                   "apt-get/dpkg")
    proc = _apt_download(debs)
    if proc.returncode != 0 and os.geteuid() == 0:
        # A machine that never ran apt-get update has no package lists to download from.
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        proc = _apt_download(debs)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ReferenceUnavailable(f"lear-gist: apt-get download {' '.join(FFTW_DEBS)} failed: {last}")
    staging = Path(tempfile.mkdtemp(dir=folder))
    for deb in sorted(debs.glob("*.deb")):
        x = subprocess.run(["dpkg", "-x", str(deb), str(staging)], capture_output=True, text=True)
        if x.returncode != 0:
            raise ReferenceUnavailable(f"lear-gist: dpkg -x {deb.name} failed: {x.stderr.strip()[-200:]}")
    shutil.rmtree(root, ignore_errors=True)
    os.replace(staging, root)
    found = _fftw_paths(root)
    if not found:
        raise ReferenceUnavailable(f"lear-gist: the FFTW packages in {debs} have no fftw3.h or libfftw3f.so.3")
    return found


def _apt_download(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", "download", "-q", *FFTW_DEBS], cwd=folder, capture_output=True, text=True)


def _fftw_paths(root: Path) -> tuple[Path, Path] | None:
    header = root / "usr" / "include" / "fftw3.h"
    libs = sorted(glob.glob(str(root / "usr" / "lib" / "*" / "libfftw3f.so.3")))
    return (header.parent, Path(libs[0])) if header.exists() and libs else None


def run(binary: Path, images: np.ndarray, nblocks: int = 4, orientations=(8, 8, 4), min_seconds: float = 0.0,
        processes: int = 1, descriptors: bool = True) -> dict:
    """lear-gist on ``images`` (n, h, w, 3) uint8 in ``processes`` processes started together.

    Each process goes over the images in order, again and again until ``min_seconds`` (and, with
    ``descriptors``, at least once over all). Returns ``descriptors`` (n, d) float32 of the first
    process's first pass (or None), ``images_per_s`` (all processes' calls over the longest process's
    wall time), ``cpu_ms_per_image`` and ``calls``.
    """
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images must be (n, h, w, 3) uint8, got shape {images.shape}")
    n, h, w, _ = images.shape
    with tempfile.TemporaryDirectory(prefix="lear_gist_") as tmp:
        data = os.path.join(tmp, "images.u8")
        images.tofile(data)
        procs = []
        try:
            for p in range(processes):
                procs.append(subprocess.Popen(
                    [str(binary), data, str(n), str(h), str(w), str(nblocks), ",".join(map(str, orientations)),
                     str(min_seconds), os.path.join(tmp, f"out{p}.f32") if descriptors else "-"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            for proc in procs:
                if proc.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"lear_gist_driver did not start: {proc.stderr.read().strip()[-300:]}")
            start = time.perf_counter()
            for proc in procs:  # the start line, to every process before any waits
                proc.stdin.write("go\n")
                proc.stdin.flush()
            done = []
            for proc in procs:
                out, err = proc.communicate()
                if proc.returncode != 0 or not out.startswith("done "):
                    raise RuntimeError(f"lear_gist_driver failed (exit {proc.returncode}): {err.strip()[-300:]}")
                calls, wall, cpu = out.split()[1:4]
                done.append((int(calls), float(wall), float(cpu)))
            outer_wall = time.perf_counter() - start
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        dim = 3 * nblocks * nblocks * sum(orientations)
        first = np.fromfile(os.path.join(tmp, "out0.f32"), dtype=np.float32).reshape(n, dim) if descriptors else None
    calls = sum(c for c, _, _ in done)
    wall = max(wl for _, wl, _ in done)
    return {"descriptors": first, "images_per_s": calls / wall, "cpu_ms_per_image":
            1000 * sum(c for _, _, c in done) / calls, "calls": calls, "wall_s": wall, "outer_wall_s": outer_wall}
