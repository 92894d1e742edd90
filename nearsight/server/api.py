"""The JSON API blueprint (``/api``): search, items, thumbnails, originals, stats, health, and the image
methods (scene completion, colorization, colour transfer).

Only item ids from a request ever reach storage: images arrive as bytes (base64 in JSON, or a
multipart file) and are decoded in memory with the decompression-bomb guard; strings are never
taken as file paths or URLs. Requests are validated here, at the edge, with the bad value in the
message; the collection validates again what only it can (vector dimension, known ids).

An image endpoint (complete, colorize, recolor) reads its input with ``read_image_request`` and
answers JSON with the result as ``image_data_url`` (or a bare JPEG with ``image_response``).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import mimetypes
import os
import time

from flask import Blueprint, jsonify, make_response, request, send_file, url_for

from ..retrieval.collection import HELPER_KINDS
from ..retrieval.encoders import IMAGE, TEXT
from ..retrieval.errors import ImageTooLarge, InvalidQuery, NearsightError, UnknownItem
from ..retrieval.images import decode_image
from ..retrieval.tar_members import is_member_key, read_member
from .app import error_response, state

bp = Blueprint("api", __name__, url_prefix="/api")

MAX_K = 1000
MAX_OFFSET = 10_000
MAX_TERMS = 32
MAX_TEXT = 1000
MAX_PREFILTER = 100_000
MAX_ID = 2 ** 63 - 1  # item ids are int64
KINDS = ("text", "image", "id", "vector")
MAX_BATCH = 256
MAX_EXCLUDE = 10_000
# What narrows or shapes a search's answer, the same fields in JSON and in a multipart form.
RESULT_FIELDS = frozenset({"filter", "exclude", "min_score", "min_similarity", "collapse"})
SEARCH_FIELDS = frozenset(KINDS) | {"query", "batch", "k", "offset", "encoder", "prefilter"} | RESULT_FIELDS
FORM_FIELDS = frozenset({"k", "offset", "encoder", "prefilter"}) | RESULT_FIELDS
PUBLIC_ENDPOINTS = frozenset({"api.health"})  # open even when a token is configured: says only "ok"
THUMB_MAX_AGE = 24 * 3600  # an id's thumbnail never changes: ids are never reused


@bp.before_request
def require_token():
    token = state().config.token
    if token is None or request.endpoint in PUBLIC_ENDPOINTS:
        return None
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return error_response(401, "unauthorized", "this server needs an 'Authorization: Bearer <token>' header")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return error_response(401, "unauthorized", "the bearer token is not valid")
    return None


# -- search -------------------------------------------------------------------------------------

@bp.post("/search")
def search():
    start = time.perf_counter()
    coll = state().holder.fresh()
    body, image_file = _search_body()
    k = _int_field(body, "k", 10, 1, MAX_K)
    offset = _int_field(body, "offset", 0, 0, MAX_OFFSET)
    prefilter = _int_field(body, "prefilter", None, 1, MAX_PREFILTER)
    if image_file is not None:
        queries = [{"image": image_file}]
    elif "batch" in body:
        queries = _batch_queries(body)
    else:
        queries = [_query_terms(body)]
    options = _result_options(body)
    encoder = body.get("encoder")
    if encoder is not None and (not isinstance(encoder, str) or not encoder):
        raise InvalidQuery(f"encoder must be a non-empty string, got {encoder!r}")
    if encoder is None:
        encoder = coll.default_encoder(TEXT if any(_uses_text(q) for q in queries) else IMAGE)
    coll.encoder_spec(encoder)  # UnknownEncoder (422) before any image is decoded
    if prefilter is not None and _pca_dim(coll, encoder) is None:
        return error_response(422, "no_pca", f"encoder {encoder!r} has no PCA to pre-filter with; fit one with "
                                             f"`nearsight fit-pca --encoder {encoder}`, or leave out prefilter")
    queries = [_decode_images(q, coll.encoder(encoder).draft_size) for q in queries]
    batches = coll.search_batch(queries, encoder=encoder, k=k, offset=offset, prefilter=prefilter, **options)
    answer = {"took_ms": round((time.perf_counter() - start) * 1000, 3), "encoder": encoder}
    thumbnail_url = _thumbnail_urls()
    if "batch" in body:
        answer["batch"] = [{"results": [_result_json(r, thumbnail_url) for r in results]} for results in batches]
    else:
        answer["results"] = [_result_json(r, thumbnail_url) for r in batches[0]]
    return jsonify(answer)


def _thumbnail_urls():
    """item id -> its thumbnail URL, from one url_for a request (a call costs ~11 us; a search makes k)."""
    head, tail = url_for("api.thumbnail", item_id=0).rsplit("/0/", 1)
    return lambda item_id: f"{head}/{item_id}/{tail}"


def _result_json(r, thumbnail_url) -> dict:
    return {"id": r.id, "score": r.score, "similarity": r.similarity, "caption": r.caption, "width": r.width,
            "height": r.height, "sha256": r.sha256, "group_size": r.group_size,
            "thumbnail_url": thumbnail_url(r.id)}


def _batch_queries(body: dict) -> list[dict]:
    """``batch``: a list of single queries ({"id": 3}, {"image": base64}, {"vector": [...]}, {"text": ...})."""
    given = [kind for kind in (*KINDS, "query") if kind in body]
    if given:
        raise InvalidQuery(f"give either batch or one query ({', '.join(given)}), not both")
    batch = body["batch"]
    if not isinstance(batch, list) or not 1 <= len(batch) <= MAX_BATCH:
        raise InvalidQuery(f"batch must be a list of 1 to {MAX_BATCH} queries like {{\"id\": 3}}, got {batch!r:.100}")
    queries = []
    for q in batch:
        if not isinstance(q, dict) or set(q) - {*KINDS, "query"}:
            raise InvalidQuery(f"each batch entry is an object with one of {', '.join(KINDS)}, query; got {q!r:.100}")
        queries.append(_query_terms(q))
    return queries


def _result_options(body: dict) -> dict:
    """filter, exclude, min_score, min_similarity, collapse: checked here, then by the library (InvalidFilter
    names unknown filter fields, 422)."""
    import json as _json

    from ..retrieval.filters import parse_filter

    flt = body.get("filter")
    if isinstance(flt, str):  # a multipart form sends the filter as a JSON string
        try:
            flt = _json.loads(flt)
        except ValueError:
            raise InvalidQuery(f"filter must be a JSON object, got {flt!r:.100}") from None
    exclude = body.get("exclude", [])
    if isinstance(exclude, str):
        exclude = [int(x) if x.lstrip("-").isdigit() else x for x in exclude.replace(",", " ").split()]
    if not isinstance(exclude, list) or len(exclude) > MAX_EXCLUDE or not all(_integer(x) is not None for x in exclude):
        raise InvalidQuery(f"exclude must be a list of at most {MAX_EXCLUDE} item ids, got {exclude!r:.100}")
    options = {"filter": parse_filter(flt), "exclude": [_integer(x) for x in exclude]}
    for name in ("min_score", "min_similarity"):
        value = body.get(name)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise InvalidQuery(f"{name} must be a number, got {value!r:.100}") from None
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InvalidQuery(f"{name} must be a number, got {value!r:.100}")
        options[name] = value
    collapse = body.get("collapse", False)
    if isinstance(collapse, str):
        collapse = {"true": True, "1": True, "false": False, "0": False}.get(collapse.strip().lower(), collapse)
    options["collapse"] = collapse
    return options


def _search_body() -> tuple[dict, bytes | None]:
    """(JSON fields, uploaded image bytes or None) from a JSON body or a multipart form."""
    if request.mimetype == "multipart/form-data":
        unknown = set(request.form) - FORM_FIELDS
        if unknown:
            raise InvalidQuery(f"unknown form field(s) {sorted(unknown)}; a multipart search takes an 'image' file "
                               f"and optionally {', '.join(sorted(FORM_FIELDS))}")
        upload = request.files.get("image")
        if upload is None or set(request.files) != {"image"}:
            raise InvalidQuery(f"a multipart search needs exactly one file field, 'image' (got {sorted(request.files)})")
        body = {name: _form_value(name, request.form[name]) for name in request.form}
        return body, upload.read()
    if request.mimetype != "application/json":
        _unsupported_media_type()
    body = _json_body()
    if not isinstance(body, dict):
        raise InvalidQuery(f"the request body must be a JSON object, got {type(body).__name__}")
    unknown = set(body) - SEARCH_FIELDS
    if unknown:
        raise InvalidQuery(f"unknown field(s) {sorted(unknown)}; use one of {', '.join(KINDS)}, query, batch, "
                           f"plus k, offset, encoder, prefilter, {', '.join(sorted(RESULT_FIELDS))}")
    nulls = sorted(name for name, value in body.items() if value is None)
    if nulls:
        raise InvalidQuery(f"field(s) {nulls} are null; leave a field out instead")
    return body, None


def _unsupported_media_type():
    from werkzeug.exceptions import UnsupportedMediaType

    raise UnsupportedMediaType(f"send application/json or multipart/form-data, "
                               f"not {request.mimetype or 'no content type'!r}")


def _json_body():
    from werkzeug.exceptions import BadRequest

    try:
        return request.get_json(force=True)
    except BadRequest:
        raise InvalidQuery("the request body is not valid JSON") from None


def _form_value(name: str, value: str):
    if name in ("encoder", "filter", "exclude", "min_score", "min_similarity", "collapse"):
        return value  # strings, parsed by _result_options
    try:
        return int(value)
    except ValueError:
        raise InvalidQuery(f"{name} must be an integer, got {value!r}") from None


def _integer(value):
    """An int, or a float with an integral value (JSON Schema counts 3.0 as an integer); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) else None


def _int_field(body: dict, name: str, default, lo: int, hi: int):
    value = body.get(name, default)
    if value is None:
        return None
    number = _integer(value)
    if number is None or not lo <= number <= hi:
        raise InvalidQuery(f"{name} must be an integer from {lo} to {hi}, got {value!r:.100}")
    return number


def _query_terms(body: dict) -> dict:
    """The one query of the body, checked term by term: {"text": ...} or {"query": [terms]}..."""
    given = [kind for kind in (*KINDS, "query") if kind in body]
    if len(given) != 1:
        raise InvalidQuery(f"give exactly one of {', '.join(KINDS)}, query; got {', '.join(given) or 'none'}")
    kind = given[0]
    if kind != "query":
        return {kind: _check_term_value(kind, body[kind])}
    terms = body["query"]
    if not isinstance(terms, list) or not 1 <= len(terms) <= MAX_TERMS:
        raise InvalidQuery(f"query must be a list of 1 to {MAX_TERMS} terms like {{\"text\": \"beach\", \"weight\": 1}}")
    checked = []
    for term in terms:
        if not isinstance(term, dict):
            raise InvalidQuery(f"each query term must be an object, got {term!r:.100}")
        unknown = set(term) - set(KINDS) - {"weight"}
        kinds = [k for k in KINDS if k in term]
        if unknown or len(kinds) != 1:
            raise InvalidQuery(f"each query term needs exactly one of {', '.join(KINDS)} and optionally weight; "
                               f"got fields {sorted(term)}")
        weight = term.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or abs(weight) > 1e6:
            raise InvalidQuery(f"term weight must be a number from -1e6 to 1e6, got {weight!r}")
        checked.append({kinds[0]: _check_term_value(kinds[0], term[kinds[0]]), "weight": float(weight)})
    return {"query": checked}


def _check_term_value(kind: str, value):
    if kind == "text":
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
            raise InvalidQuery(f"text must be a non-empty string of at most {MAX_TEXT} characters, got {value!r:.100}")
        return value
    if kind == "id":
        number = _integer(value)
        if number is None:
            raise InvalidQuery(f"id must be an integer, got {value!r:.100}")
        if not 0 <= number <= MAX_ID:
            raise UnknownItem(f"no item with id {number}")
        return number
    if kind == "vector":
        if (not isinstance(value, list) or not value
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)):
            raise InvalidQuery(f"vector must be a non-empty list of numbers, got {value!r:.100}")
        return value
    return _b64_image(value)


def _b64_image(value) -> bytes:
    """A base64 string (optionally a data: URL) -> image file bytes, size-checked. Never a path, never a URL."""
    if not isinstance(value, str) or not value:
        raise InvalidQuery(f"image must be a base64 string of the image file's bytes, got {value!r:.100}")
    if value.startswith("data:"):
        head, comma, value = value.partition(",")
        if not comma or not head.endswith(";base64"):
            raise InvalidQuery("an image data: URL must be base64 encoded (data:image/jpeg;base64,...)")
    size, limit = len(value) // 4 * 3, state().config.max_upload_bytes
    if size - 2 > limit:  # known from the text's length: refused before spending a decode on it
        raise ImageTooLarge(f"the image file is about {size:,} bytes, over the limit of {limit:,}")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidQuery("image is not valid base64 (send the image file's bytes, base64 encoded)") from None
    return _sized(data)


def _sized(data: bytes) -> bytes:
    limit = state().config.max_upload_bytes
    if len(data) > limit:
        raise ImageTooLarge(f"the image file is {len(data):,} bytes, over the limit of {limit:,}")
    return data


def _uses_text(query: dict) -> bool:
    return "text" in query or any("text" in t for t in query.get("query", []))


def _decode_images(query: dict, min_side: int) -> dict:
    """Image bytes -> PIL images, decoded in memory under the pixel limit (ImageError 415, ImageTooLarge 413)."""
    def image(data: bytes):
        return decode_image(_sized(data), min_side=min_side, max_pixels=state().config.max_pixels).image

    if "image" in query:
        return {"image": image(query["image"])}
    if "query" in query:
        return {"query": [{**t, "image": image(t["image"])} if "image" in t else t for t in query["query"]]}
    return query


# -- image input for the image endpoints (complete, colorize, recolor) -------------------------

def read_image_request(fields: frozenset[str] = frozenset(), images: frozenset[str] = frozenset()) -> tuple:
    """(PIL RGB image, other fields) from multipart (file 'image') or JSON ({"image": base64, "id": n}).

    JSON may name a collection item by ``id`` instead of sending the image. ``fields`` are the other
    fields the endpoint accepts (multipart form values arrive as strings); ``images`` name further
    optional image fields (a file in multipart, base64 in JSON), returned decoded among the fields.
    Anything else, and a null anywhere, is a 400.
    """
    if request.mimetype == "multipart/form-data":
        unknown = (set(request.form) - fields) | (set(request.files) - images - {"image"})
        upload = request.files.get("image")
        if unknown or upload is None:
            raise InvalidQuery(f"send a file field 'image' plus optionally {sorted(fields | images)}; "
                               f"got {sorted({*request.form, *request.files})}")
        rest = dict(request.form)
        rest.update({name: _decode_upload(request.files[name].read()) for name in images if name in request.files})
        return _decode_upload(upload.read()), rest
    if request.mimetype != "application/json":
        _unsupported_media_type()
    body = _json_body()
    if not isinstance(body, dict):
        raise InvalidQuery("send a JSON object with 'image' (base64) or 'id', or a multipart form with an 'image' file")
    unknown = set(body) - fields - images - {"image", "id"}
    if unknown or ("image" in body) == ("id" in body):
        raise InvalidQuery(f"give exactly one of image (base64) or id, plus optionally {sorted(fields | images)}; "
                           f"got {sorted(body)}")
    nulls = sorted(name for name, value in body.items() if value is None)
    if nulls:
        raise InvalidQuery(f"field(s) {nulls} are null; leave a field out instead")
    rest = {k: v for k, v in body.items() if k in fields}
    rest.update({name: _decode_upload(_b64_image(body[name])) for name in images if name in body})
    if "id" in body:
        item_id = _check_term_value("id", body["id"])
        _live_item(item_id)
        return state().holder.collection.load_image(item_id), rest
    return _decode_upload(_b64_image(body["image"])), rest


def _request_item_id() -> int | None:
    """The collection item a JSON image request named by ``id`` (checked by ``read_image_request``), else None."""
    if request.mimetype != "application/json":
        return None
    body = request.get_json(silent=True)  # cached: the body read_image_request parsed
    return _integer(body.get("id")) if isinstance(body, dict) else None


def _upload_sha256() -> str | None:
    """sha256 of the uploaded 'image' file (multipart or base64 JSON), as ingest hashes files; None for an id."""
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("image")
        if upload is None:
            return None
        upload.stream.seek(0)
        return hashlib.sha256(upload.stream.read()).hexdigest()
    body = request.get_json(silent=True)
    if isinstance(body, dict) and isinstance(body.get("image"), str):
        return hashlib.sha256(_b64_image(body["image"])).hexdigest()
    return None


def _decode_upload(data: bytes):
    return decode_image(_sized(data), max_pixels=state().config.max_pixels).image


def _jpeg_bytes(image, quality: int) -> bytes:
    """A PIL image or (H, W, 3) uint8 array -> JPEG file bytes."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def image_response(image, quality: int = 92):
    """A PIL image -> a JPEG response that is not cached."""
    response = make_response(_jpeg_bytes(image, quality))
    response.mimetype = "image/jpeg"
    response.headers["Cache-Control"] = "no-store"
    return response


def image_data_url(image, quality: int = 90) -> str:
    """A PIL image or (H, W, 3) uint8 array -> ``data:image/jpeg;base64,...`` (an image inside a JSON answer)."""
    return "data:image/jpeg;base64," + base64.b64encode(_jpeg_bytes(image, quality)).decode("ascii")


# -- image methods: scene completion, colorization, colour transfer ----------------------------------
# Each checks its request here, then runs as a job in a worker process (``job_routes.run_job``): the
# answer is JSON with the result as a JPEG data URL, or with ``?async=1`` a 202 and the job's status.
# The library modules (scipy, cv2, PyMaxflow) load in the workers, never in a server that only searches.

MAX_COMPLETIONS = 50
# Each composite is a full-size graph cut and Poisson solve, about 0.8 s apiece on one core at 1024x768
# (measured: n=6 in 5.3 s, n=1 in 1.7 s), so the server makes 6, not the library's 20, unless asked.
DEFAULT_COMPLETIONS = 6
MAX_NEIGHBORS = 64
COLORIZE_NEIGHBORS = 8
RECOLOR_NEIGHBORS = 5


def _field_int(fields: dict, name: str, default: int, lo: int, hi: int) -> int:
    """An integer field: a JSON number, or a multipart form string."""
    value = fields.get(name, default)
    if isinstance(value, str) and request.mimetype == "multipart/form-data":
        value = _form_value(name, value)
    return _int_field({name: value}, name, default, lo, hi)


def _field_bool(fields: dict, name: str) -> bool:
    value = fields.get(name, False)
    if isinstance(value, str) and request.mimetype == "multipart/form-data":
        value = {"true": True, "1": True, "false": False, "0": False}.get(value.strip().lower(), value)
    if not isinstance(value, bool):
        raise InvalidQuery(f"{name} must be true or false, got {value!r:.100}")
    return value


@bp.post("/complete")
def complete():
    """Scene completion: the hole (white in ``mask``) filled from the collection's photos, best first."""
    start = time.perf_counter()
    image, fields = read_image_request(frozenset({"n"}), images=frozenset({"mask"}))
    n = _field_int(fields, "n", DEFAULT_COMPLETIONS, 1, MAX_COMPLETIONS)
    if "mask" not in fields:
        raise InvalidQuery("scene completion needs a 'mask' image of the photo's size (white = the hole to fill)")
    from .job_routes import run_job

    item_id = _request_item_id()
    # The query never completes itself: its item by id, or by the uploaded file's content hash.
    return run_job("complete", {"image": image, "mask": fields["mask"], "n": n,
                                "exclude": () if item_id is None else (item_id,),
                                "query_sha256": _upload_sha256()}, start)


@bp.post("/colorize")
def colorize():
    """Colorization of a gray (or sepia) photo from its nearest neighbours by luminance descriptors."""
    start = time.perf_counter()
    image, fields = read_image_request(frozenset({"n"}))
    n = _field_int(fields, "n", COLORIZE_NEIGHBORS, 1, MAX_NEIGHBORS)
    from .job_routes import run_job

    item_id = _request_item_id()
    return run_job("colorize", {"image": image, "n": n, "exclude": () if item_id is None else (item_id,)}, start)


@bp.post("/recolor")
def recolor():
    """Reinhard colour transfer toward an uploaded ``reference``, the item ``like``, or the photo's neighbours."""
    start = time.perf_counter()
    image, fields = read_image_request(frozenset({"like", "n", "per_region"}), images=frozenset({"reference"}))
    n = _field_int(fields, "n", RECOLOR_NEIGHBORS, 1, MAX_NEIGHBORS)
    per_region = _field_bool(fields, "per_region")
    like = None
    if "like" in fields:
        if "reference" in fields:
            raise InvalidQuery("give either like (an item id) or reference (an image), not both")
        value = fields["like"]
        if isinstance(value, str) and request.mimetype == "multipart/form-data":
            value = _form_value("like", value)
        like = _integer(value)
        if like is None:
            raise InvalidQuery(f"like must be an item id (an integer), got {value!r:.100}")
        if like < 0:
            raise UnknownItem(f"no item with id {like}")
        _live_item(like)
    from .job_routes import run_job

    item_id = _request_item_id()
    return run_job("recolor", {"image": image, "like": like, "reference": fields.get("reference"), "n": n,
                               "per_region": per_region, "exclude": () if item_id is None else (item_id,)}, start)


# -- items --------------------------------------------------------------------------------------

def _live_item(item_id: int):
    if item_id > MAX_ID:
        raise UnknownItem(f"no item with id {item_id}")
    item = state().holder.collection.item(item_id)
    if item.deleted:
        replaced = f"; it was replaced by item {item.replaced_by}" if item.replaced_by is not None else ""
        raise UnknownItem(f"item {item_id} was removed from the collection{replaced}")
    return item


@bp.get("/items")
def browse():
    """Items to look through without a query (the page's grid on arrival): recent first, or shuffled."""
    from ..retrieval.filters import BROWSE_ORDERS, browse_ids

    coll = state().holder.fresh()
    args = {name: request.args[name] for name in request.args}
    unknown = set(args) - {"k", "offset", "order", "seed"}
    if unknown:
        raise InvalidQuery(f"unknown parameter(s) {sorted(unknown)}; use k, offset, order, seed")
    numbers = {}
    for name, default, hi in (("k", 30, MAX_K), ("offset", 0, 10_000_000), ("seed", 0, 2 ** 32 - 1)):
        value = args.get(name, str(default))
        if not value.isdigit() or not (name == "k" and 1 <= int(value) <= hi or name != "k" and int(value) <= hi):
            raise InvalidQuery(f"{name} must be an integer from {1 if name == 'k' else 0} to {hi}, got {value!r:.100}")
        numbers[name] = int(value)
    order = args.get("order", "recent")
    if order not in BROWSE_ORDERS:
        raise InvalidQuery(f"order must be one of {', '.join(BROWSE_ORDERS)}, got {order!r:.100}")
    table = coll.item_table()
    ids = browse_ids(table, order, numbers["k"], numbers["offset"], numbers["seed"])
    items = []
    for item_id in ids:
        it = coll.item(int(item_id))
        items.append({"id": it.id, "caption": it.caption, "width": it.width, "height": it.height,
                      "sha256": it.sha256, "added": it.added,
                      "thumbnail_url": url_for("api.thumbnail", item_id=it.id)})
    return jsonify({"items": items, "total": len(table), "order": order})


@bp.get("/items/<int:item_id>")
def item(item_id: int):
    it = _live_item(item_id)
    return jsonify({
        "id": it.id, "caption": it.caption, "width": it.width, "height": it.height,
        "filename": os.path.basename(it.path.rpartition("::")[2] if is_member_key(it.path) else it.path),
        "bytes": it.size, "sha256": it.sha256, "duplicates": len(it.aliases),
        "thumbnail_url": url_for("api.thumbnail", item_id=it.id),
        "image_url": url_for("api.image", item_id=it.id),
    })


@bp.get("/items/<int:item_id>/thumbnail")
def thumbnail(item_id: int):
    _live_item(item_id)
    data = state().holder.collection.thumbnail(item_id)
    response = make_response(data)
    response.mimetype = "image/jpeg"
    response.set_etag(hashlib.blake2b(data, digest_size=16).hexdigest())
    response.cache_control.max_age = THUMB_MAX_AGE
    if state().config.token is None:
        response.cache_control.public = True
    else:
        response.cache_control.private = True  # behind a token: no shared caches
    return response.make_conditional(request)


@bp.get("/items/<int:item_id>/image")
def image(item_id: int):
    """The original file, from the path the index recorded (never a path from the request)."""
    it = _live_item(item_id)
    store = state().holder.collection.store
    for source in [it.path, *it.aliases]:
        entry = store.path_entry(source)
        if entry is None or entry[0] != it.id:
            continue  # this source now holds other content
        mimetype = mimetypes.guess_type(source.rpartition("::")[2])[0] or "application/octet-stream"
        if is_member_key(source):
            try:
                data = read_member(source)
            except (OSError, KeyError, EOFError, ValueError):
                continue
            if hashlib.sha256(data).hexdigest() != it.sha256:
                continue
            return send_file(io.BytesIO(data), mimetype=mimetype, max_age=0)
        try:
            st = os.stat(source)
        except OSError:
            continue
        if not os.path.isfile(source) or (st.st_size, st.st_mtime_ns) != entry[1:]:
            continue  # gone, or changed since it was indexed
        return send_file(source, mimetype=mimetype, conditional=True, etag=True, max_age=0)
    raise UnknownItem(f"the original file of item {item_id} is no longer available (its thumbnail still is)")


# -- collection ---------------------------------------------------------------------------------

@bp.get("/stats")
def stats():
    coll = state().holder.fresh()
    encoders = []
    for spec in coll.manifest["encoders"]:
        name = spec["name"]
        index = None
        meta_path = os.path.join(coll.dir, "indexes", coll.storage(name) + ".json")
        if os.path.exists(meta_path):
            import json

            with open(meta_path) as f:
                meta = json.load(f)
            index = {k: meta[k] for k in ("factory", "recall", "k", "ntotal", "warnings") if k in meta}
        kind = coll.encoder_kind(name)
        encoders.append({"name": name, "dim": spec["dim"], "metric": spec["metric"], "modalities": spec["modalities"],
                         "kind": kind, "helper": kind in HELPER_KINDS,
                         "embedded": sum(p["count"] for p in coll.parts(name)), "index": index,
                         "pca_dim": _pca_dim(coll, name)})
    defaults = {}
    for modality in (IMAGE, TEXT):
        try:
            defaults[modality] = coll.default_encoder(modality)
        except NearsightError:  # no encoder takes this modality
            defaults[modality] = None
    config = state().config
    report = coll.encoder(defaults[TEXT]).training_report() if defaults[TEXT] else None
    text = {"encoder": defaults[TEXT], "examples": (report or {}).get("examples", []), "feedback": config.feedback}
    return jsonify({"items": coll.count, "encoders": encoders, "default_encoder": defaults, "text": text,
                    "limits": {"max_k": MAX_K, "max_offset": MAX_OFFSET, "max_upload_bytes": config.max_upload_bytes,
                               "max_pixels": config.max_pixels, "max_prefilter": MAX_PREFILTER}})


@bp.post("/feedback")
def feedback():
    """Record which result of a text search the user opened, and the results ranked above it that they passed
    over: (query, good, bad) triples that ``nearsight train`` learns from. Only with ``serve --feedback``."""
    from ..indexer.pairs import record_feedback

    if not state().config.feedback:
        return error_response(403, "feedback_off", "this server does not record search feedback "
                                                   "(start it with `nearsight serve --feedback`)")
    body = _json_body()
    if not isinstance(body, dict) or set(body) - {"text", "opened", "passed_over"}:
        raise InvalidQuery("feedback is an object with text, opened and passed_over")
    text, opened, passed = body.get("text"), body.get("opened"), body.get("passed_over", [])
    if not isinstance(text, str) or not text.strip() or len(text) > 1000:
        raise InvalidQuery("text must be the text query, 1 to 1000 characters")
    if not isinstance(passed, list) or len(passed) > MAX_K:
        raise InvalidQuery(f"passed_over must be a list of at most {MAX_K} item ids")
    for value in [opened, *passed]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidQuery(f"item ids must be non-negative integers, got {value!r:.50}")
        _live_item(value)
    coll = state().holder.fresh()
    record_feedback(coll.dir, " ".join(text.split()), opened, [i for i in passed if i != opened])
    return jsonify({"recorded": True})


def _pca_dim(coll, encoder: str) -> int | None:
    """Components of the encoder's fitted PCA (for ``prefilter``), or None when none is fitted."""
    import numpy as np

    from ..retrieval.pca import PCA_FILE

    path = os.path.join(coll.dir, "embeddings", encoder, PCA_FILE)
    if not os.path.exists(path):
        return None
    with np.load(path) as f:
        return int(f["components"].shape[0])


@bp.get("/health")
def health():
    return jsonify({"status": "ok"})
