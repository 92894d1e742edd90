"""Search filters: which items a search may return, as a set of allowed ids handed to the k-NN search.

A filter is evaluated against a columnar copy of the item metadata (``ItemTable``, built once per store
generation), so a selective filter still yields k results: the search runs over the allowed ids only
(see ``filtered_knn``), it does not drop results after the fact.

    SearchFilter(path_prefix="/photos/2019/", caption="beach sunset", min_width=1024, exclude=(12,))
"""
from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, fields

import numpy as np

from .errors import InvalidFilter

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class SearchFilter:
    """All given conditions must hold. Sizes are in pixels (inclusive bounds); ``added_after`` /
    ``added_before`` are unix seconds (the time the item was indexed; items indexed before nearsight kept
    that time use their file's modification time); ``caption``: every word must occur in the caption
    (case-insensitive, whole words); ``ids``: an allow-list; ``exclude``: a deny-list."""
    path_prefix: str | None = None
    caption: str | None = None
    min_width: int | None = None
    max_width: int | None = None
    min_height: int | None = None
    max_height: int | None = None
    added_after: float | None = None
    added_before: float | None = None
    ids: tuple[int, ...] | None = None
    exclude: tuple[int, ...] = ()

    @property
    def needs_metadata(self) -> bool:
        """Whether a condition reads item metadata (an id list alone does not)."""
        return any(getattr(self, f.name) is not None for f in fields(self) if f.name not in ("ids", "exclude"))

    @property
    def empty(self) -> bool:
        return not self.needs_metadata and self.ids is None and not self.exclude

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) not in (None, ())}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


FILTER_FIELDS = tuple(f.name for f in fields(SearchFilter))
_INT_FIELDS = ("min_width", "max_width", "min_height", "max_height")


def parse_filter(value) -> SearchFilter:
    """A SearchFilter, a dict of its fields (JSON, CLI) or None -> SearchFilter; InvalidFilter names the bad
    field. Dates may be unix seconds or ISO 8601 strings ("2024-05-01", "2024-05-01T12:00:00Z")."""
    if value is None:
        return SearchFilter()
    if isinstance(value, SearchFilter):
        return value
    if not isinstance(value, dict):
        raise InvalidFilter(f"filter must be an object with fields {', '.join(FILTER_FIELDS)}, got {value!r:.100}")
    unknown = sorted(set(value) - set(FILTER_FIELDS))
    if unknown:
        raise InvalidFilter(f"unknown filter field(s) {unknown}; filters are: {', '.join(FILTER_FIELDS)}")
    out = {}
    for name, v in value.items():
        if v is None:
            continue
        if name in ("path_prefix", "caption"):
            if not isinstance(v, str) or not v.strip():
                raise InvalidFilter(f"filter {name} must be a non-empty string, got {v!r:.100}")
            out[name] = v
        elif name in _INT_FIELDS:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or v < 0:
                raise InvalidFilter(f"filter {name} must be a non-negative integer, got {v!r:.100}")
            out[name] = int(v)
        elif name in ("added_after", "added_before"):
            out[name] = _timestamp(name, v)
        else:
            out[name] = _id_list(name, v)
    return SearchFilter(**out)


def _timestamp(name: str, v) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
        return float(v)
    if isinstance(v, str):
        try:
            when = dt.datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.timezone.utc)
            return when.timestamp()
    raise InvalidFilter(f"filter {name} must be unix seconds or an ISO 8601 date, got {v!r:.100}")


def _id_list(name: str, v) -> tuple[int, ...]:
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if not isinstance(v, (list, tuple, set, frozenset)) or not all(
            isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in v):
        raise InvalidFilter(f"filter {name} must be a list of item ids (integers), got {v!r:.100}")
    return tuple(sorted({int(x) for x in v}))


class ItemTable:
    """The item metadata filters read, as columns over live items: ids (n,) int64, width, height (n,)
    int64, added (n,) float64 unix seconds, paths and lower-cased captions (lists of str)."""

    def __init__(self, items):
        items = [it for it in items if not it.deleted]
        self.ids = np.array([it.id for it in items], dtype=np.int64)
        self.width = np.array([it.width for it in items], dtype=np.int64)
        self.height = np.array([it.height for it in items], dtype=np.int64)
        self.added = np.array([it.added if it.added is not None else it.mtime_ns / 1e9 for it in items], np.float64)
        self.paths = [it.path for it in items]
        self.aliases = [it.aliases for it in items]
        self.captions = [(it.caption or "").lower() for it in items]

    def __len__(self) -> int:
        return len(self.ids)


def allowed_ids(f: SearchFilter, table_fn) -> np.ndarray | None:
    """Sorted (m,) int64 ids the filter admits, or None when it admits everything. ``table_fn()`` returns
    the ``ItemTable`` (called only when a condition needs metadata). Never an error for a filter that
    matches nothing: an empty array."""
    if f.empty:
        return None
    if not f.needs_metadata:
        if f.ids is None:
            return None  # a deny-list alone: the search skips those ids (``denied``)
        return np.setdiff1d(np.asarray(f.ids, np.int64), np.asarray(f.exclude, np.int64))
    t = table_fn()
    keep = np.ones(len(t), bool)
    for name, column, op in (("min_width", t.width, np.greater_equal), ("max_width", t.width, np.less_equal),
                             ("min_height", t.height, np.greater_equal), ("max_height", t.height, np.less_equal),
                             ("added_after", t.added, np.greater_equal), ("added_before", t.added, np.less)):
        bound = getattr(f, name)
        if bound is not None:
            keep &= op(column, bound)
    if f.path_prefix is not None:
        prefix = _path_prefix(f.path_prefix)
        keep &= np.array([p.startswith(prefix) or any(a.startswith(prefix) for a in al)
                          for p, al in zip(t.paths, t.aliases)], dtype=bool)
    if f.caption is not None:
        words = [w.lower() for w in _WORD.findall(f.caption)]
        keep &= np.array([all(re.search(rf"\b{re.escape(w)}\b", c) for w in words) for c in t.captions], dtype=bool)
    ids = t.ids[keep]
    if f.ids is not None:
        ids = np.intersect1d(ids, np.asarray(f.ids, np.int64))
    if f.exclude:
        ids = np.setdiff1d(ids, np.asarray(f.exclude, np.int64))
    return np.sort(ids)


def _path_prefix(prefix: str) -> str:
    """Folders are matched as recorded (absolute paths); a relative prefix is taken from the working folder."""
    if "::" in prefix or os.path.isabs(prefix):
        return prefix
    keep_sep = prefix.endswith(os.sep)
    absolute = os.path.abspath(prefix)
    return absolute + os.sep if keep_sep else absolute


BROWSE_ORDERS = ("recent", "random")


def browse_ids(table: ItemTable, order: str = "recent", k: int = 30, offset: int = 0, seed: int = 0) -> np.ndarray:
    """A page of live item ids to look through without a query: the most recently added first (ties: the
    higher id), or a random order fixed by ``seed`` (so paging through it neither repeats nor skips)."""
    if order == "recent":
        ranked = np.lexsort((-table.ids, -table.added))
    elif order == "random":
        ranked = np.random.default_rng(seed).permutation(len(table))
    else:
        raise InvalidFilter(f"order must be one of {', '.join(BROWSE_ORDERS)}, got {order!r:.100}")
    return table.ids[ranked[offset:offset + k]]
