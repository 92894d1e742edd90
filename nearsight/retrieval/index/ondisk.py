"""IVF builds past memory: lists filled shard by shard from a trained index, merged into one on-disk file.

The recipe of faiss ``contrib/ondisk.py``: each shard is an empty copy of the trained index filled with the next
run of vectors and written to a temporary file; the shards are read back memory-mapped and merged by faiss's
``OnDiskInvertedLists.merge_from_multiple`` into ``<prefix>.<token>.ivfdata``, one compact file whose lists are
memory-mapped. Memory holds the trained index, one float32 block and one shard's lists at a time
(``plan.ondisk_sizes``), whatever the number of vectors; the shards' own mappings are released as soon as the
merge is done (contrib's version keeps them for the life of the process).

The ``.ivfdata`` file is named once per build and never rewritten, so a process that has an older one mapped
keeps reading it while a rebuild writes the next; ``storage.save_index`` removes those no saved index names.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
import uuid

import faiss
import numpy as np

from ..errors import NearsightError
from . import backend
from .plan import IndexPlan, ondisk_sizes, parse_factory

LOG = logging.getLogger(__name__)

IVFDATA = ".ivfdata"


def ivfdata_pattern(encoder: str):
    """The names this module gives the merged lists of ``encoder``: ``<encoder>.<16 hex>.ivfdata``."""
    import re

    return re.compile(re.escape(encoder) + r"\.[0-9a-f]{16}" + re.escape(IVFDATA))


def fill_on_disk(template: np.ndarray, blocks, skip: np.ndarray | None, plan: IndexPlan, prefix: str,
                 progress=None, total: int = 0) -> tuple[faiss.Index, str, dict]:
    """Fill the trained index ``template`` (serialized) from ``blocks`` of (x (b, d) float32, ids (b,) int64),
    shard by shard, and merge the shards into ``<prefix>.<token>.ivfdata``.

    Returns (index whose inverted lists are that file, memory-mapped; the file's path; build figures).
    ``skip``: ids left out (held out for tuning). The shard files live in a folder beside the output, removed
    on the way out, success or not.
    """
    trained = backend.deserialize(template)
    ivf = faiss.extract_index_ivf(trained)
    fixed = int(template.nbytes)
    sizes = ondisk_sizes(plan.budget_bytes, fixed, plan.dim, int(ivf.code_size))
    if sizes is None:
        raise NearsightError(f"a memory budget of {plan.budget_bytes} bytes cannot hold the trained {plan.factory} "
                             f"({fixed} bytes) and one shard of its lists")
    capacity, _ = sizes
    token = uuid.uuid4().hex[:16]
    out = f"{prefix}.{token}{IVFDATA}"
    workdir = f"{prefix}.{token}.shards"
    os.makedirs(workdir)
    t0 = time.perf_counter()
    shard_files: list[str] = []
    done = 0
    try:
        shard, held = None, 0
        for x, bid in blocks:
            done += len(x)
            if skip is not None and len(skip):
                keep = ~np.isin(bid, skip)
                x, bid = x[keep], bid[keep]
            start = 0
            while start < len(x):
                if shard is None:
                    shard, held = backend.deserialize(template), 0
                room = min(len(x) - start, capacity - held)
                shard.add_with_ids(x[start:start + room], bid[start:start + room])
                held += room
                start += room
                if held >= capacity:
                    shard_files.append(_write_shard(shard, workdir, len(shard_files)))
                    shard = None
            if progress is not None:
                progress(done, total)
        if shard is not None and held:
            shard_files.append(_write_shard(shard, workdir, len(shard_files)))
        del shard
        t_fill = time.perf_counter() - t0
        merged = merge(trained, shard_files, out)
    except BaseException:
        if os.path.exists(out):
            os.remove(out)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    figures = {"ondisk_shards": len(shard_files), "ondisk_shard_capacity": capacity,
               "ondisk_fill_seconds": round(t_fill, 3), "ondisk_merge_seconds": round(time.perf_counter() - t0 - t_fill, 3),
               "ondisk_read": done}
    LOG.info("filled %d shard(s) of up to %d vectors and merged them into %s", len(shard_files), capacity, out)
    return merged, out, figures


def _write_shard(shard: faiss.Index, workdir: str, i: int) -> str:
    path = os.path.join(workdir, f"shard-{i:05d}.faiss")
    faiss.write_index(shard, path)
    return path


def merge(trained: faiss.Index, shard_files: list[str], out: str) -> faiss.Index:
    """``trained`` (empty) with the lists of every shard file merged into ``out``; the shards are read memory-mapped
    and released before returning."""
    if trained.ntotal:
        raise NearsightError("an on-disk merge starts from an empty trained index")
    ivf = faiss.extract_index_ivf(trained)
    shards = [faiss.read_index(path, faiss.IO_FLAG_MMAP) for path in shard_files]   # kept alive for the merge
    lists = faiss.InvertedListsPtrVector()
    for shard in shards:
        lists.push_back(faiss.extract_index_ivf(shard).invlists)
    ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, out)
    ntotal = ondisk.merge_from_multiple(lists.data(), lists.size(), False) if len(shards) else 0
    del lists, shards
    trained.ntotal = ivf.ntotal = ntotal
    ivf.replace_invlists(ondisk, True)
    ondisk.this.disown()      # owned by the index now
    return trained


def map_lists(index: faiss.Index, ivfdata_name: str) -> None:
    """Point an index read with ``IO_FLAG_SKIP_IVF_DATA`` at its ``.ivfdata`` (by the name it is open under) and
    map it read-only; the name recorded inside the index file is where the build wrote it, which a moved
    collection no longer has."""
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        raise NearsightError(f"index lists are {type(lists).__name__}, not on-disk lists")
    lists.filename = ivfdata_name
    lists.read_only = True
    lists.do_mmap()


def is_ondisk_factory(factory: str) -> bool:
    """Factories whose lists can live in an ``.ivfdata`` file (IVF with plain codes; fast-scan packs blocks)."""
    parts = parse_factory(factory)
    return parts.kind == "ivf" and not parts.fast_scan
