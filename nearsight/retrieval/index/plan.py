"""Which index to build: a FAISS factory key chosen from (n, d, metric, memory budget), with the reasons.

No data and no faiss import are needed here, so the choice can be shown (and tested) before anything is built.

The grid, from small to large collections:

- ``Flat``: exact search while a brute-force scan is cheap (n <= FLAT_MAX_N) and fits the budget.
- ``HNSW32`` (float32 vectors in the graph): the fastest at high recall when 4d + 8M + 24 bytes a vector fit;
  ``HNSW32,SQ8`` (1 byte a dimension, re-ranked exactly) when only that fits.
- ``PCA256,HNSW32`` (the graph walks 256-d PCA projections; candidates re-ranked exactly from float16 rows) for
  wide vectors (d >= 1024, so a walk reads at least 4x fewer bytes a row) whose full-width graph would take over
  a quarter of the budget. That graph holds a float32 copy of rows the collection already keeps in float16: at
  1M x 3072 (tiny) 12.4 GB beside 6 GB of rows, which left a 24 GB machine paging while it served. Projected,
  it takes 1.2 GB and a warm single search 0.41 ms against 0.92 ms, at the same recall@10 (0.97; re-ranking
  restores what PCA loses; scripts/bench_scale.py --baseline-index).
- ``OPQm,IVFk,PQmx4fs`` (OPQ rotation, 4-bit fast-scan PQ), candidates re-ranked exactly from float16 rows;
  ``compact`` mode keeps codes, ids and the fixed parts (quantizer, rotation) at <= 64 bytes a vector. OPQ pays
  at these compressions (>= 4 dimensions a sub-quantizer): on GIST-like data (energy uneven over dimensions)
  PQ alone cannot reach recall@10 0.95 even re-ranking 32k candidates, with OPQ it does at 16k; on CLIP-like
  data the same recall comes ~35% faster (scripts/bench_index.py datasets, 50k vectors).
- ``IVFk,PQm`` loaded memory-mapped (inverted lists stay on disk) when not even the compact codes fit in memory.
- ``LSHr``: sign bits of a random rotation, Hamming distance, training-free; on request (mode="lsh").
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field

from ..errors import NearsightError

MODES = ("auto", "speed", "compact", "lsh")
KINDS = ("flat", "hnsw", "ivf", "lsh", "other")

FLAT_MAX_N = 20_000          # exact while a scan is a few ms a query; HNSW is >10x faster beyond this
SPEED_FLAT_MAX_N = 5_000     # speed mode moves to HNSW sooner
IVF_MIN_N = 10_000           # fewer vectors than this train poor coarse centroids; stay exact
HNSW_MAX_N = 20_000_000      # beyond this an HNSW build takes too long on one machine; IVF instead
HNSW_M = 32
PCA_DIM = 256                # dimensions a PCA-reduced graph walks
PCA_SHARE = 0.25             # a full-width graph over this share of the budget walks PCA projections instead
COMPACT_BYTES = 64           # compact mode: at most this many bytes a vector in memory, ids included
ID_BYTES = 8
STALE_GROWTH = 10.0          # IVF training is stale once the index holds this many times what it was built on


@dataclass(frozen=True)
class IndexPlan:
    """What to build and why.

    - ``factory``: FAISS index factory key (the configuration language, saved beside the index).
    - ``kind``: "flat", "hnsw", "ivf", "lsh" or "other" (any other factory key, searched as given).
    - ``rerank``: re-rank candidates with exact distances from the float16 shards (lossy codes).
    - ``train_size``: vectors sampled to train (0: training-free).
    - ``bytes_per_vector`` / ``memory_bytes``: estimated size in memory (on disk when ``on_disk``).
    - ``on_disk``: built out of memory (lists filled shard by shard, merged into one on-disk file, see
      ``ondisk.py``) and searched with the lists memory-mapped; ``memory_bytes`` is then what stays in memory.
    - ``warnings``: where the plan falls short of what was asked (a compact budget it cannot meet, an index
      kind that is not worth it); the CLI, ``info`` and the API show these, not only the reasons.
    """
    factory: str
    kind: str
    metric: str
    dim: int
    n: int
    rerank: bool
    train_size: int
    bytes_per_vector: float
    memory_bytes: int
    on_disk: bool = False
    mode: str = "auto"
    ef_construction: int = 80
    budget_bytes: int = 0    # the memory budget planned for; an on-disk build sizes its shards by it
    reasons: tuple[str, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reasons"] = list(self.reasons)
        d["warnings"] = list(self.warnings)
        return d


# -- sizes ----------------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.I)


def parse_size(text) -> int:
    """"2G", "512M", "1.5GiB", "64k", "1000" -> bytes (binary multiples: 1K = 1024). Ints pass through."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise NearsightError(f"a size must be positive, got {text!r}")
        return int(text)
    m = _SIZE.match(str(text))
    if not m:
        raise NearsightError(f"cannot read {text!r} as a size; use a number with an optional K, M, G or T suffix")
    value = float(m.group(1)) * 1024 ** "_kmgt".index((m.group(2) or "_").lower())
    if value <= 0:
        raise NearsightError(f"a size must be positive, got {text!r}")
    return int(value)


def default_memory_budget() -> int:
    """Half the physical memory: the rest is for the embeddings, the store and the process itself."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
    except (ValueError, OSError, AttributeError):
        return 4 << 30


# -- factory keys ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class FactoryParts:
    """What a factory key says, as far as sizing and tuning need: kind, lossy codes, code size."""
    kind: str
    lossy: bool
    needs_training: bool
    hnsw_m: int = 0
    nlist: int = 0
    pq_m: int = 0
    pq_bits: int = 8
    fast_scan: bool = False
    opq: bool = False
    storage: str = "Flat"     # "Flat", "SQ8", "SQ4", "SQfp16", "PQ", "LSH"
    pca: int = 0              # dimensions after a PCA pre-transform ("PCA256,HNSW32"), 0 without


_IVF = re.compile(r"IVF(\d+)")
_PQ = re.compile(r"(?<![O])PQ(\d+)(?:x(\d+))?(fsr|fs)?")
_HNSW = re.compile(r"^(?:PCA(\d+),)?HNSW(\d+)(?:[_,](\w+))?$")


def parse_factory(factory: str) -> FactoryParts:
    key = factory.replace(" ", "")
    if key in ("Flat", "IDMap,Flat"):
        return FactoryParts("flat", lossy=False, needs_training=False)
    if re.fullmatch(r"LSH(r?)(t?)", key):
        return FactoryParts("lsh", lossy=True, needs_training=key.endswith("t"), storage="LSH")
    m = _HNSW.match(key)
    if m:
        storage, pca = m.group(3) or "Flat", int(m.group(1) or 0)
        return FactoryParts("hnsw", lossy=storage != "Flat" or bool(pca),
                            needs_training=storage not in ("Flat", "SQfp16") or bool(pca),
                            hnsw_m=int(m.group(2)), storage=storage, pca=pca)
    ivf = _IVF.search(key)
    if ivf:
        pq = _PQ.search(key.split("IVF", 1)[1])
        opq = key.startswith("OPQ")
        if pq:
            return FactoryParts("ivf", lossy=True, needs_training=True, nlist=int(ivf.group(1)),
                                pq_m=int(pq.group(1)), pq_bits=int(pq.group(2) or 8), fast_scan=bool(pq.group(3)),
                                opq=opq, storage="PQ")
        tail = key.rsplit(",", 1)[-1]
        return FactoryParts("ivf", lossy=tail != "Flat", needs_training=True, nlist=int(ivf.group(1)),
                            opq=opq, storage=tail)
    return FactoryParts("other", lossy=True, needs_training=True)


def _storage_bytes(storage: str, d: int) -> float:
    return {"Flat": 4.0 * d, "SQ8": float(d), "SQ6": 0.75 * d, "SQ4": 0.5 * d, "SQfp16": 2.0 * d,
            "SQbf16": 2.0 * d, "LSH": d / 8}.get(storage, 4.0 * d)


# What the per-vector and structural terms below leave out, measured on serialized faiss 1.15 indexes (the
# estimates were up to 1.5% under the real size without them; tests/test_index_production.py checks each kind):
HEADER_BYTES = 1024          # faiss's headers and scalars (90 B for a Flat, ~140 B for an LSHr)
LIST_BYTES = 8               # an inverted list's length
FAST_SCAN_LIST_BYTES = 32    # a fast-scan list's length and its code and id vector lengths (measured 20-27 B)


def estimate_size(factory: str, d: int) -> tuple[float, int]:
    """(bytes a vector, fixed bytes) of an index built from ``factory``, ids included; an upper-side estimate."""
    p = parse_factory(factory)
    if p.kind == "flat":
        return 4.0 * d + ID_BYTES, HEADER_BYTES
    if p.kind == "lsh":
        # the per-bit thresholds, and for LSHr the d x d rotation
        return d / 8 + ID_BYTES, HEADER_BYTES + 4 * d + (4 * d * d if "r" in factory else 0)
    if p.kind == "hnsw":
        # level 0 holds 2M links, upper levels add ~M/(M-1) more; offsets (8) + level (4) + id map (8)
        links = 4 * (2 * p.hnsw_m + p.hnsw_m / max(p.hnsw_m - 1, 1))
        width = p.pca or d
        pca = 4 * d * (p.pca + 2) if p.pca else 0     # the projection matrix, the mean and the eigenvalues
        return _storage_bytes(p.storage, width) + links + 20 + ID_BYTES, 8 * width * 4 + pca + HEADER_BYTES
    if p.kind == "ivf":
        fixed = HEADER_BYTES + 4 * d * p.nlist + (4 * d * d if p.opq else 0) + LIST_BYTES * p.nlist
        if p.storage == "PQ":
            code = math.ceil(p.pq_m * p.pq_bits / 8)
            fixed += 4 * d * (1 << p.pq_bits)
            if p.fast_scan:
                # lists are padded to blocks of 32 codes
                fixed += p.nlist * 32 * code // 2 + (FAST_SCAN_LIST_BYTES - LIST_BYTES) * p.nlist
            return code + ID_BYTES, fixed
        if p.storage.startswith("SQ"):
            fixed += 2 * 4 * d      # the quantizer's trained minimum and range a dimension
        return _storage_bytes(p.storage, d) + ID_BYTES, fixed
    return 4.0 * d + ID_BYTES, 0


# -- out-of-memory builds -------------------------------------------------------------------------

ONDISK_MIN_SHARD = 1024      # vectors a shard holds at the least: fewer make a merge of thousands of files
ONDISK_MIN_BLOCK = 256       # float32 vectors read at once at the least
ONDISK_MAX_BLOCK = 65536


def ondisk_sizes(budget: int, fixed: int, d: int, code_size: int) -> tuple[int, int] | None:
    """(vectors a shard holds, vectors read a block) for an on-disk IVF build within ``budget`` bytes, or None
    when not even the smallest shard fits. In memory at once: the trained index (``fixed``), one float32 block
    and one shard's lists (codes + 8-byte ids, twice for the lists' growth by doubling)."""
    work = budget - fixed
    per_shard_vector = 2 * (code_size + ID_BYTES)
    # about half the room for reading, never so much that the smallest shard no longer fits
    block = min(ONDISK_MAX_BLOCK, max(ONDISK_MIN_BLOCK, work // (8 * d)),
                (work - ONDISK_MIN_SHARD * per_shard_vector) // (4 * d))
    if block < ONDISK_MIN_BLOCK:
        return None
    return int((work - block * 4 * d) // per_shard_vector), int(block)


def ondisk_min_budget(fixed: int, d: int, code_size: int) -> int:
    """The smallest budget ``ondisk_sizes`` accepts."""
    return int(fixed + ONDISK_MIN_BLOCK * 4 * d + ONDISK_MIN_SHARD * 2 * (code_size + ID_BYTES))


def human_size(nbytes: float) -> str:
    """Bytes as ``parse_size`` reads them back, rounded up: 3.2M, 1.50G."""
    for unit, scale in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if nbytes >= scale:
            return f"{math.ceil(nbytes / scale * 100) / 100:g}{unit}"
    return str(int(nbytes))


# -- the choice -----------------------------------------------------------------------------------

def _nlist(n: int) -> int:
    """About 2 sqrt(n) lists as a power of two, with >= 39 training points a centroid."""
    nlist = 2 ** round(math.log2(max(2 * math.sqrt(max(n, 1)), 16)))
    while nlist > 16 and n < 39 * nlist:
        nlist //= 2
    return int(min(max(nlist, 16), 65536))


def _ivf_train_size(n: int, nlist: int, pq_bits: int = 4) -> int:
    """>= 39 points a coarse centroid and a PQ centroid (faiss's minimum), 64 a centroid when n allows."""
    return int(min(n, max(39 * nlist, 39 * (1 << pq_bits), min(64 * nlist, 262_144))))


def with_degree(factory: str, m: int) -> str:
    """An HNSW factory key with its degree replaced: ("PCA256,HNSW32", 16) -> "PCA256,HNSW16"."""
    return re.sub(r"HNSW\d+", f"HNSW{m}", factory, count=1)


def _even_divisors(d: int, cap: float) -> list[int]:
    return [m for m in range(2, d + 1, 2) if d % m == 0 and m <= cap]


def _plan(factory, kind, metric, d, n, mode, reasons, *, train_size=0, on_disk=False, ef_c=80,
          warnings=(), budget=0) -> IndexPlan:
    bpv, fixed = estimate_size(factory, d)
    return IndexPlan(factory=factory, kind=kind, metric=metric, dim=d, n=n,
                     rerank=parse_factory(factory).lossy, train_size=int(train_size),
                     bytes_per_vector=float(bpv), memory_bytes=int(fixed if on_disk else bpv * n + fixed),
                     on_disk=on_disk, mode=mode, ef_construction=ef_c, reasons=tuple(reasons),
                     warnings=tuple(warnings), budget_bytes=int(budget))


_ROWS = ("candidates re-ranked exactly from float16 rows ({} B/vector, not counted above: they stay on disk, "
         "memory-mapped, and take page cache only as queries touch them)")


def _check(n, d, metric, mode):
    if not isinstance(n, (int,)) or n < 0:
        raise NearsightError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(d, int) or d <= 0:
        raise NearsightError(f"d must be a positive int, got {d!r}")
    if metric not in ("ip", "l2"):
        raise NearsightError(f"metric must be 'ip' or 'l2', got {metric!r}")
    if mode not in MODES:
        raise NearsightError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def plan_index(n: int, d: int, metric: str, max_memory_bytes=None, mode: str = "auto") -> IndexPlan:
    """Choose an index for n vectors of dimension d. ``max_memory_bytes``: int or "2G"; None = half the RAM.

    ``mode``: "auto" (the fastest index that fits, HNSW only up to HNSW_MAX_N vectors because of its build
    time), "speed" (HNSW whenever it fits, however long the build), "compact" (<= 64 bytes a vector in memory),
    "lsh" (training-free binary codes).
    """
    n = int(n)
    _check(n, d, metric, mode)
    budget = parse_size(max_memory_bytes) if max_memory_bytes is not None else default_memory_budget()
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    reasons: list[str] = []

    if mode == "lsh":
        # LSH scans every code (n Hamming distances a query) and then re-ranks k * k_factor candidates exactly;
        # high recall needs a re-rank depth that grows with n. On Fashion-MNIST (60k x 784, scripts/
        # bench_index.py) it was no faster than exact search at recall@10 0.95 and 7x slower at 0.99.
        warnings = ["LSH is for a training-free build, not for speed: each query scans all codes and re-ranks "
                    "a share of the collection exactly; at recall@10 >= 0.95 it is often no faster than exact "
                    "search (tuning measures both and says so)"]
        if n <= FLAT_MAX_N:
            warnings.append(f"{n} vectors: an exact scan (Flat) is as fast as LSH here and exact")
        return _plan("LSHr", "lsh", metric, d, n, mode,
                     [f"LSH on request: {d} sign bits of a random rotation, no training; "
                      "Hamming candidates are re-ranked exactly from the embeddings"], warnings=warnings)

    flat_bytes = n * (4 * d + ID_BYTES)
    small = n <= {"auto": FLAT_MAX_N, "speed": SPEED_FLAT_MAX_N}.get(mode, IVF_MIN_N - 1)
    if small and flat_bytes <= budget:
        return _plan("Flat", "flat", metric, d, n, mode,
                     [f"{n} vectors: an exact scan is fast enough", f"needs {gib(flat_bytes)} of a {gib(budget)} budget"])
    if small:
        reasons.append(f"exact Flat needs {gib(flat_bytes)}, over the {gib(budget)} budget")

    if mode in ("auto", "speed"):
        if n > HNSW_MAX_N and mode == "auto":
            reasons.append(f"{n} vectors: more than {HNSW_MAX_N} make an HNSW build too slow")
        else:
            full_bpv, full_fixed = estimate_size(f"HNSW{HNSW_M}", d)
            full = n * full_bpv + full_fixed
            factory = f"PCA{PCA_DIM},HNSW{HNSW_M}"
            bpv, fixed = estimate_size(factory, d)
            if d >= 4 * PCA_DIM and full > PCA_SHARE * budget and n * bpv + fixed <= budget:
                reasons.append(f"HNSW{HNSW_M} would hold {gib(full)} of float32 {d}-d rows, over a quarter of the "
                               f"{gib(budget)} budget: a graph search reads its rows from random memory, so the "
                               f"graph walks {PCA_DIM}-d PCA projections instead")
                reasons.append(f"{factory} needs {gib(n * bpv + fixed)} ({bpv:.0f} B/vector); PCA trained on "
                               f"{min(n, 65536)} sampled vectors")
                reasons.append(_ROWS.format(2 * d))
                return _plan(factory, "hnsw", metric, d, n, mode, reasons, train_size=min(n, 65536))
            for storage in ("", ",SQ8"):
                factory = f"HNSW{HNSW_M}{storage}"
                bpv, fixed = estimate_size(factory, d)
                need = n * bpv + fixed
                if need <= budget:
                    reasons.append(f"{factory} needs {gib(need)} ({bpv:.0f} B/vector), within the {gib(budget)} budget")
                    if storage:
                        reasons.append("8-bit scalar codes in the graph; candidates re-ranked exactly")
                    return _plan(factory, "hnsw", metric, d, n, mode, reasons,
                                 train_size=min(n, 65536) if storage else 0)
                reasons.append(f"{factory} needs {gib(need)}, over the {gib(budget)} budget")

    nlist = _nlist(n)
    train = _ivf_train_size(n, nlist)
    cap = d / 8     # 4-bit codes, m <= d/4: at least 4 dimensions a sub-quantizer, where OPQ pays
    fallback = None
    for m in reversed(_even_divisors(d, 2 * cap)):
        factory = f"OPQ{m},IVF{nlist},PQ{m}x4fs"
        bpv, fixed = estimate_size(factory, d)
        if n * bpv + fixed > budget:
            continue
        per_vector = bpv + fixed / max(n, 1)
        if fallback is None and bpv <= COMPACT_BYTES:
            fallback = (m, factory, per_vector)
        if mode == "compact" and per_vector > COMPACT_BYTES:
            continue
        reasons.append(f"OPQ{m},IVF{nlist},PQ{m}x4fs: {m} 4-bit fast-scan codes, {per_vector:.0f} B/vector in "
                       f"memory with the quantizer and rotation{' (compact mode)' if mode == 'compact' else ''}; "
                       f"trained on {train} sampled vectors")
        reasons.append(_ROWS.format(2 * d))
        return _plan(factory, "ivf", metric, d, n, mode, reasons, train_size=train)
    if fallback is not None:      # compact mode where the fixed parts alone break 64 B/vector at this n
        m, factory, per_vector = fallback
        bpv, fixed = estimate_size(factory, d)
        reasons.append(f"{factory}: {per_vector:.0f} B/vector; at {n} vectors the quantizer and rotation alone "
                       f"push it over {COMPACT_BYTES} B/vector (codes and ids are {m // 2 + ID_BYTES} B)")
        reasons.append(_ROWS.format(2 * d))
        # said where the user looks (build-index output, info, the API), not only among the reasons
        warning = (f"compact mode cannot meet {COMPACT_BYTES} B/vector at {n} vectors: {factory} takes "
                   f"{per_vector:.0f} B/vector in memory: {bpv:.0f} B of codes and id, plus "
                   f"{fixed / max(n, 1):.0f} B/vector for the coarse centroids, PQ codebooks and OPQ rotation, "
                   "a fixed cost that only a larger collection spreads thinner")
        return _plan(factory, "ivf", metric, d, n, mode, reasons, train_size=train, warnings=[warning])

    # not even the smallest fast-scan code fits: 8-bit PQ, built shard by shard into inverted lists on disk
    ms8 = _even_divisors(d, min(64, d / 2))
    m = ms8[-1] if ms8 else 1
    factory = f"IVF{nlist},PQ{m}"
    train = _ivf_train_size(n, nlist, 8)
    _, fixed = estimate_size(factory, d)
    if ondisk_sizes(budget, fixed, d, m) is None:
        smallest = ondisk_min_budget(fixed, d, m)
        in_memory = [n * b + f for b, f in (estimate_size(f"OPQ{k},IVF{nlist},PQ{k}x4fs", d)
                                            for k in _even_divisors(d, 2 * cap))]
        smallest = min([smallest, *in_memory])
        raise NearsightError(
            f"a memory budget of {budget} bytes ({human_size(budget)}) is too small for any index of {n} {d}-d "
            f"vectors; the smallest that works is {human_size(smallest)} (--max-memory {human_size(smallest)})")
    shard, _ = ondisk_sizes(budget, fixed, d, m)
    reasons.append(f"no in-memory code fits {gib(budget)} for {n} vectors: IVF{nlist},PQ{m} built out of memory "
                   f"(trained once on {train} sampled vectors, lists filled {shard} vectors at a time and merged "
                   "into one file on disk), searched memory-mapped; candidates re-ranked exactly from the float16 "
                   "embeddings")
    return _plan(factory, "ivf", metric, d, n, mode, reasons, train_size=train, on_disk=True, budget=budget)


def plan_from_factory(factory: str, n: int, d: int, metric: str, mode: str = "auto") -> IndexPlan:
    """The plan for an explicit factory key (``--factory``): its kind, re-ranking and training sample."""
    _check(int(n), d, metric, mode if mode in MODES else "auto")
    parts = parse_factory(factory)
    if parts.kind == "ivf":
        if parts.nlist > n and n > 0:
            raise NearsightError(f"factory {factory!r} asks for {parts.nlist} lists but only {n} vectors exist")
        train = _ivf_train_size(n, parts.nlist, parts.pq_bits if parts.storage == "PQ" else 4)
    elif parts.needs_training:
        train = min(n, 65536)
    else:
        train = 0
    return _plan(factory, parts.kind, metric, d, int(n), mode, [f"factory {factory!r} given explicitly"],
                 train_size=train)
