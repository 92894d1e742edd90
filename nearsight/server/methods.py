"""The image methods as jobs: ``prepare`` checks and shrinks a request's inputs at submit (in the request
thread, so a bad request is its 4xx at once, never a failed job later), ``run`` makes the JSON answer
in a worker process (``jobs.worker_main`` calls it).

Inputs are plain arrays and numbers (they cross a pipe): the photo reduced to ``max_side`` on its long
side, which bounds what the method holds in memory whatever was uploaded (a completion also carries the
photo at its own size, for the full-size blend that ``full_max_pixels`` bounds).
"""
from __future__ import annotations

import base64
import io
import math
import time

import numpy as np

from ..retrieval.errors import ImageError, InvalidQuery, UnknownEncoder

METHODS = ("complete", "colorize", "recolor")


# -- submit time (request thread) ------------------------------------------------------------------

def prepare(collection, method: str, inputs: dict, max_side: int) -> dict:
    """Check what the library would refuse later and cap the working size. Raises the usual errors."""
    if method == "complete":
        from ..retrieval.complete import CompletionConfig, prepare_inputs
        from ..retrieval.scene_match import require_gist

        require_gist(collection)
        rgb, hole = prepare_inputs(inputs["image"], inputs["mask"], CompletionConfig(max_side=max_side))
        full = {}
        if rgb.shape[:2] != (inputs["image"].height, inputs["image"].width):
            # composited at the working size, blended again at the photo's own in the worker
            full = {"full_image": np.asarray(inputs["image"].convert("RGB")),
                    "full_mask": np.asarray(inputs["mask"].convert("L"))}
        return {**inputs, "image": rgb, "mask": hole, **full}
    if method == "colorize":
        from ..retrieval.colorize import GRAY_ENCODERS

        _require_encoders(collection, GRAY_ENCODERS, "the luminance descriptors colorization needs")
        _require_items(collection)
        return {**inputs, "image": _capped(inputs["image"], max_side)}
    if method == "recolor":
        from ..retrieval.colorize import COLOUR_ENCODERS, GRAY_ENCODERS

        if inputs.get("reference") is None and inputs.get("like") is None:
            _require_encoders(collection, GRAY_ENCODERS + COLOUR_ENCODERS, "an image descriptor to find the "
                                                                           "photo's neighbours with")
            _require_items(collection)
        reference = inputs.get("reference")
        return {**inputs, "image": _capped(inputs["image"], max_side),
                "reference": None if reference is None else _capped(reference, max_side, "the reference")}
    raise InvalidQuery(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")


def _require_encoders(collection, wanted: tuple[str, ...], what: str) -> None:
    if not any(name in collection.encoder_names for name in wanted):
        raise UnknownEncoder(f"collection {collection.dir} has none of {what} ({', '.join(wanted)}); it has: "
                             f"{', '.join(collection.encoder_names) or 'none'}. Index it with one of them "
                             f"(e.g. --encoders tiny-gray).")


def _require_items(collection) -> None:
    if collection.count <= 0:
        raise InvalidQuery(f"collection {collection.dir} is empty: there are no photos to take colours from")


def _capped(image, max_side: int, what: str = "the image") -> np.ndarray:
    """PIL image -> (H, W, 3) uint8 RGB, reduced to ``max_side`` on the long side, at least MIN_SIDE a side."""
    from PIL import Image

    from ..retrieval.colorize import MIN_SIDE

    if min(image.size) < MIN_SIDE:
        raise ImageError(f"{what} is {image.width}x{image.height} px; colour needs at least {MIN_SIDE} px on "
                         f"each side")
    image = image.convert("RGB")
    if max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


# -- in the worker ----------------------------------------------------------------------------------

def run(collection, method: str, inputs: dict, progress) -> dict:
    """The JSON answer of ``method`` (the same as the synchronous route's), images as JPEG data URLs."""
    start = time.perf_counter()
    exclude = tuple(inputs.get("exclude", ()))
    if method == "complete":
        from ..retrieval.complete import CompletionConfig, complete_scene_report

        # Composited at the working size capped at submit, then blended again at the photo's own size
        # (bounded by CompletionConfig.full_max_pixels), so the filled region is as sharp as the photo.
        config = CompletionConfig(max_side=max(inputs["image"].shape[:2]))
        image, mask = (inputs["full_image"], inputs["full_mask"]) if "full_image" in inputs else \
            (inputs["image"], inputs["mask"])
        report = complete_scene_report(collection, image, mask, n=inputs["n"], config=config,
                                       exclude=exclude, progress=progress, query_sha256=inputs.get("query_sha256"))
        completions = report.completions
        progress("encode", 1.0)
        answers = []
        for c in completions:
            summary = c.to_dict()
            summary["terms"] = {name: _finite(value) for name, value in summary["terms"].items()}
            answers.append({**summary, "score": _finite(summary["score"]), "image": data_url(c.image)})
        answer = {"completions": answers, "skipped": report.skipped}
    elif method == "colorize":
        from ..retrieval.colorize import colorize

        result = colorize(collection, inputs["image"], n_neighbors=inputs["n"], exclude_ids=exclude,
                          progress=progress)
        answer = {"image": data_url(result.image()), "neighbor_ids": list(result.neighbor_ids),
                  "usage": [round(u, 6) for u in result.usage], "warnings": list(result.warnings)}
    elif method == "recolor":
        from ..retrieval.colorize import ColorizeConfig, recolor

        result = recolor(collection, inputs["image"], like_id=inputs.get("like"), reference=inputs.get("reference"),
                         n_neighbors=inputs["n"], per_region=inputs.get("per_region", False), exclude_ids=exclude,
                         progress=progress, reference_side=ColorizeConfig.work_side)
        answer = {"image": data_url(result.image()), "reference_ids": list(result.reference_ids),
                  "warnings": list(result.warnings)}
    else:
        raise InvalidQuery(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    answer["took_ms"] = round((time.perf_counter() - start) * 1000, 3)
    return answer


def data_url(image, quality: int = 90) -> str:
    """A PIL image or (H, W, 3) uint8 array -> ``data:image/jpeg;base64,...``."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _finite(value: float) -> float | None:
    """JSON has no infinity or NaN: such a value goes out as null."""
    return value if math.isfinite(value) else None
