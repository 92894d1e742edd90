"""Decode workers: bytes -> hash, upright RGB at reduced size, thumbnail, each encoder's preprocessed array.

Runs in worker processes (one ``DecodeTask`` configures them) so that decoding overlaps with encoding and
LMDB writes in the main process. Every failure comes back as a ``Failed`` with its reason; nothing raises.
"""
from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass, field

import numpy as np

from ..retrieval.encoders import create_encoder
from ..retrieval.errors import ImageError
from ..retrieval.images import decode_image, decode_sides, read_file, thumbnail_jpeg
from ..retrieval.tar_members import is_member_key, read_member
from .sources import Source


@dataclass(frozen=True)
class DecodeTask:
    """What workers compute: encoder specs (name, config) to preprocess for, and whether to make thumbnails."""
    encoders: tuple[tuple[str, tuple], ...]
    max_pixels: int
    thumbnail_side: int = 256
    thumbnails: bool = True


@dataclass
class Decoded:
    source: Source
    sha256: str
    width: int
    height: int
    thumbnail: bytes | None
    arrays: dict[str, np.ndarray]   # preprocessed, per encoder; emptied once encoded
    item_id: int = -1  # set for backfills of existing items
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # (dim,) float32 per encoder, once encoded


@dataclass
class Failed:
    source: Source
    reason: str
    item_id: int = -1


_worker: "Decoder | None" = None


class Decoder:
    def __init__(self, task: DecodeTask):
        self.task = task
        self.encoders = [create_encoder(name, device="cpu", **dict(cfg)) for name, cfg in task.encoders]
        # Each encoder gets the image decoded at its own draft size, exactly as a query for it is decoded
        # (retrieval.images.decode_sides), whatever other encoders the collection has.
        self.sides = [e.draft_size for e in self.encoders] + ([task.thumbnail_side] if task.thumbnails else [])

    def __call__(self, job: tuple[Source, int]) -> Decoded | Failed:
        source, item_id = job
        try:
            data = read_source(source)
            views = decode_sides(data, self.sides, max_pixels=self.task.max_pixels)
            arrays = {e.name: e.preprocess(views[e.draft_size].image) for e in self.encoders}
            thumb = thumbnail_jpeg(views[self.task.thumbnail_side].image, self.task.thumbnail_side) \
                if self.task.thumbnails else None
            decoded = views[self.sides[0]] if self.sides else decode_image(data, max_pixels=self.task.max_pixels)
        except ImageError as exc:
            return Failed(source, str(exc), item_id)
        except MemoryError:
            return Failed(source, "out of memory while decoding", item_id)
        except Exception as exc:  # one bad image must never stop a run; keep the reason
            return Failed(source, f"{type(exc).__name__}: {exc}", item_id)
        return Decoded(source, hashlib.sha256(data).hexdigest(), decoded.width, decoded.height, thumb, arrays, item_id)


def read_source(source: Source) -> bytes:
    """The file bytes of a source (one seek for a tar member). ImageError when unreadable."""
    if source.size < 0:
        raise ImageError(f"no such file: {source.key}")
    if source.offset < 0 and is_member_key(source.key):  # a tar member known by name only (backfill)
        try:
            return read_member(source.key)
        except (KeyError, OSError, tarfile.TarError) as exc:
            raise ImageError(f"cannot read {source.key}: {exc}") from None
    if source.offset >= 0:  # a tar member: one seek into its shard
        return read_file(source.file, source.offset, source.size)
    return read_file(source.file)


def pixel_encoders(encoders: list) -> list:
    """The encoders that need decoded pixels: all but those computed from another one's vectors in this run."""
    names = {e.name for e in encoders}
    return [e for e in encoders if e.derived_from not in names]


def init_worker(task: DecodeTask) -> None:
    global _worker
    # Decode workers share the cores with the encoder; one thread each avoids oversubscription.
    try:
        import cv2
        cv2.setNumThreads(1)
    except ImportError:
        pass
    _worker = Decoder(task)


def decode_job(job: tuple[Source, int]) -> Decoded | Failed:
    return _worker(job)
