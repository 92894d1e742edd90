"""The query left out of its own completion (Hays & Efros 2007): its item, its copies and its crops.

Three ways a collection can hold the query photo, each caught where it is cheapest:

- ``query_items``: the item with the photo's content hash, and ids the caller names;
- near-duplicates (the same frame re-encoded, resized or lightly edited): one of the ``duplicate_check``
  best scenes whose thumbnail matches the photo's unmasked pixels (mean absolute difference under
  ``duplicate_error`` at 64 px). The masked GIST distance alone cannot say it: a copy ranks first, but its
  distance is not near zero (the hole's content still weighs in GIST's cells, and JPEG noise moves the
  fine scales): 0.04-0.5 of the median distance in the tests, where the same scene shot 8 px aside is at 0.1;
- crops (a part of the photo, rescaled, mirrored or not, or a larger photo the query was cut from): another
  frame, so no pixel-by-pixel test sees it; ``compose.crops`` searches each candidate in the query and the
  query in it by masked normalised cross-correlation over scales. That costs tens of milliseconds a
  candidate, so it runs on the ``duplicate_check`` best scenes and then on each candidate just before it
  is composited (a crop anywhere else in the ranking is never used, so it need not be found).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import replace

import numpy as np
from PIL import Image

from .compose.crops import CropFinder
from .errors import NearsightError
from .scene_match import SceneMatches, thumbnail_image

__all__ = ["query_items", "QueryCopies", "DUPLICATE_SLACK", "DUPLICATE_SIDE"]

LOG = logging.getLogger(__name__)

DUPLICATE_SLACK = 20   # scenes asked for beyond ``candidates``: the copies among the first are dropped
DUPLICATE_SIDE = 64


def query_items(collection, exclude, query_sha256: str | None) -> set[int]:
    """The ids to leave out as the query itself: those asked for, and the item with the photo's content hash."""
    out = {int(i) for i in exclude}
    if query_sha256:
        same = collection.store.id_for_hash(query_sha256)
        if same is not None:
            out.add(int(same))
    return out


class QueryCopies:
    """The query's copies and crops among the candidates of one completion, and the verdicts so far.

    - ``rgb`` (H, W, 3) uint8 and ``hole`` (H, W) bool: the photo as completion sees it.
    - ``duplicate_error``: the near-duplicate threshold (see the module docstring).
    - ``crop_threshold``: masked NCC at or above which a candidate is a crop (None: crops are not looked for).

    ``near_duplicates`` and ``crops`` list the ids found, in the order they were found. Thread-safe.
    """

    def __init__(self, collection, rgb: np.ndarray, hole: np.ndarray, duplicate_error: float,
                 crop_threshold: float | None):
        self.collection = collection
        self.rgb, self.hole = rgb, hole
        self.duplicate_error = duplicate_error
        self.crop_threshold = crop_threshold
        self.near_duplicates: list[int] = []
        self.crops: list[int] = []
        self._verdicts: dict[int, bool] = {}
        self._matches: dict = {}
        self._finder: CropFinder | None = None
        self._lock = threading.Lock()

    # -- near-duplicates: the same frame --------------------------------------------------------------------
    def drop_near_duplicates(self, scenes: SceneMatches, check: int, keep: int) -> SceneMatches:
        """``scenes`` without the copies of the photo among its first ``check`` (and the crops there too),
        at most ``keep`` of the rest."""
        maybe = np.arange(min(check, len(scenes.ids)))  # scenes come best first
        copy = np.zeros(len(scenes.ids), bool)
        if len(maybe):
            height, width = self.hole.shape
            size = (DUPLICATE_SIDE, max(1, round(DUPLICATE_SIDE * height / width))) if width >= height else \
                (max(1, round(DUPLICATE_SIDE * width / height)), DUPLICATE_SIDE)
            query = np.asarray(Image.fromarray(self.rgb).resize(size, Image.Resampling.BOX), np.float32)
            kept = np.asarray(Image.fromarray((~self.hole).astype(np.uint8) * 255)
                              .resize(size, Image.Resampling.BOX)) == 255
            for row in maybe:
                item_id = int(scenes.ids[row])
                thumb = thumbnail_image(self.collection, item_id, DUPLICATE_SIDE).convert("RGB")
                if abs(thumb.width / thumb.height - width / height) <= 0.03 * width / height:
                    pixels = np.asarray(thumb.resize(size, Image.Resampling.BOX), np.float32)
                    if kept.any() and np.abs(pixels - query)[kept].mean() < self.duplicate_error:
                        # Confirmed by the fine structure: two photos of one smooth colour layout can be
                        # this close at 64 px (4.6 in the tests) and still share no object or pixel.
                        match = self._match(item_id)
                        if match is None or match.is_copy(self.crop_threshold):
                            copy[row] = True
                            self.near_duplicates.append(item_id)
                            self._verdicts[item_id] = True
                            continue
                copy[row] = self.is_crop(item_id)
        rows = np.flatnonzero(~copy)[:keep]
        return replace(scenes, ids=scenes.ids[rows], distance=scenes.distance[rows], gist=scenes.gist[rows],
                       colour=scenes.colour[rows])

    # -- crops: another frame --------------------------------------------------------------------------------
    def _crop_finder(self) -> CropFinder:
        with self._lock:
            if self._finder is None:
                self._finder = CropFinder(self.rgb, ~self.hole)
            return self._finder

    def _match(self, item_id: int):
        """The crop search's best match for the item's thumbnail (None: crops not looked for, or unreadable)."""
        if self.crop_threshold is None:
            return None
        with self._lock:
            if item_id in self._matches:
                return self._matches[item_id]
        try:
            thumb = thumbnail_image(self.collection, item_id, None).convert("RGB")
            match = self._crop_finder().match(np.asarray(thumb))
        except NearsightError as exc:
            LOG.debug("item %d not compared with the query: %s", item_id, exc)
            match = None
        with self._lock:
            self._matches[item_id] = match
        return match

    def is_crop(self, item_id: int) -> bool:
        """Whether item ``item_id`` is a crop of the photo or the photo a crop of it (recorded in ``crops``)."""
        item_id = int(item_id)
        if self.crop_threshold is None:
            return False
        with self._lock:
            if item_id in self._verdicts:
                return self._verdicts[item_id]
        match = self._match(item_id)
        if match is None:  # an unreadable candidate is not a copy; compositing will judge it
            return False
        found = match.is_copy(self.crop_threshold)
        with self._lock:
            if item_id not in self._verdicts:
                self._verdicts[item_id] = found
                if found:
                    self.crops.append(item_id)
                    LOG.debug("item %d is a crop of the query: %s", item_id, match)
        return found
