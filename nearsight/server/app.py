"""The Flask app behind ``nearsight serve``: ``create_app(ServerConfig) -> Flask``.

One process holds one opened collection (LMDB read-only), its encoders and indexes, shared by the
server's threads. What a running ``nearsight index`` adds becomes visible without a restart: a request
first calls ``Collection.refresh`` (a read of the LMDB generation counter and a few stats, at most every
``CHECK_INTERVAL_S``, 50 ms), which drops cached embeddings and indexes when another process committed; item and
thumbnail reads go to LMDB directly and always see the latest commit. SIGHUP (``install_reload_signal``)
reopens the collection from scratch, for changes refresh cannot see (a collection rebuilt in place).

Access: with a token configured (``--token`` or ``NEARSIGHT_TOKEN``) every ``/api`` route but
``/api/health`` needs ``Authorization: Bearer <token>``. The health probe, the web page, its static
files and ``/openapi.json`` stay open: they hold nothing from the collection. Every route answers only
requests whose ``Host`` is a loopback name or one of ``allowed_hosts`` (DNS rebinding; see ``guard.py``).

Errors are JSON ``{"error": {"code", "message"}}``, never a stack trace (see ``STATUS``).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, field

import orjson
from flask import Flask, current_app, has_app_context, jsonify, request, send_from_directory
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from ..retrieval.collection import CHECK_INTERVAL_S, Collection
from ..retrieval.errors import (CollectionBusy, ImageError, ImageTooLarge, InvalidFilter, InvalidMask, InvalidQuery,
                                NearsightError, UnknownEncoder, UnknownItem, UnsupportedModality, WeightsUnavailable)
from ..retrieval.images import DEFAULT_MAX_PIXELS
from .guard import host_allowed, public_message
from .jobs import JobConfig

LOG = logging.getLogger(__name__)

TOKEN_ENV = "NEARSIGHT_TOKEN"
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

# nearsight error class -> (HTTP status, error code); the most specific class wins (ImageTooLarge before ImageError).
STATUS: tuple[tuple[type[NearsightError], int, str], ...] = (
    (InvalidFilter, 422, "invalid_filter"),
    (InvalidMask, 422, "invalid_mask"),
    (InvalidQuery, 400, "invalid_query"),
    (UnknownItem, 404, "unknown_item"),
    (ImageTooLarge, 413, "image_too_large"),
    (ImageError, 415, "not_an_image"),
    (UnknownEncoder, 422, "unknown_encoder"),
    (UnsupportedModality, 422, "unsupported_modality"),
    (WeightsUnavailable, 503, "weights_unavailable"),
    (CollectionBusy, 503, "collection_busy"),
)


def _env_token() -> str | None:
    return os.environ.get(TOKEN_ENV) or None


@dataclass(frozen=True)
class ServerConfig:
    """What ``create_app`` needs. ``token`` defaults to ``$NEARSIGHT_TOKEN`` (unset or empty: no token)."""
    collection: str
    token: str | None = field(default_factory=_env_token)
    max_upload_bytes: int = 20 * 1024 * 1024  # an uploaded image file, after base64 decoding
    max_pixels: int = DEFAULT_MAX_PIXELS      # decompression-bomb guard for uploads
    device: str = "auto"
    jobs: JobConfig = field(default_factory=JobConfig)  # the heavy image methods' workers and queue
    # Host names answered besides the loopback ones ("*": any); see guard.py on DNS rebinding.
    allowed_hosts: tuple[str, ...] = ()
    feedback: bool = False  # record which result of a text search was opened (POST /api/feedback)
    # serve --processes: this process's index and every process's private loopback port (see workers.py)
    process: int | None = None
    peers: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_upload_bytes < 1 or self.max_pixels < 1:
            raise ValueError(f"max_upload_bytes and max_pixels must be positive, got {self.max_upload_bytes}, {self.max_pixels}")
        if self.token is not None and not self.token.strip():
            raise ValueError("token must not be blank")

    @property
    def max_request_bytes(self) -> int:
        """Request body limit: an image of ``max_upload_bytes`` as base64 in JSON (4/3 larger) plus slack."""
        return self.max_upload_bytes * 4 // 3 + 64 * 1024


class CollectionHolder:
    """The process's opened collection. ``reload`` swaps in a freshly opened one.

    Stores opened twice in one process share one LMDB environment (see ``store.py``), so the old
    collection is closed only after the new one holds the environment, and requests in flight keep
    working. A store replaced on disk (a collection rebuilt in place) cannot share it: then the old
    environment is closed first and a request in flight during the swap may fail with a 500.
    """

    def __init__(self, directory: str, device: str = "auto"):
        self.directory, self.device = directory, device
        self._lock = threading.Lock()
        self._collection = Collection.open(directory, device=device, readonly=True)
        self._identity = _store_identity(directory)

    @property
    def collection(self) -> Collection:
        return self._collection

    def fresh(self) -> Collection:
        """The collection, after picking up what other processes committed since the last call."""
        coll = self._collection
        coll.refresh(CHECK_INTERVAL_S)
        return coll

    def reload(self) -> None:
        """Reopen: re-read the manifest, drop every cached encoder, embedding matrix and index."""
        with self._lock:
            old, identity = self._collection, _store_identity(self.directory)
            if identity != self._identity:
                old.close()
            self._collection = Collection.open(self.directory, device=self.device, readonly=True)
            self._identity = identity
            old.close()  # idempotent: a no-op when already closed above
        LOG.info("reopened collection %s (%d items)", self.directory, self._collection.count)


def _store_identity(directory: str) -> tuple[int, int]:
    st = os.stat(os.path.join(directory, "store.lmdb", "data.mdb"))
    return st.st_dev, st.st_ino


@dataclass(frozen=True)
class State:
    config: ServerConfig
    holder: CollectionHolder


def state() -> State:
    """The nearsight state of the app handling the current request."""
    return current_app.extensions["nearsight"]


class OrjsonProvider(DefaultJSONProvider):
    """Answers serialised by orjson: a search's answer in 3 us against the stdlib's 37 (with stored items read by it
    too, a search by id at 1M items cost the server ~0.25 CPU-ms less of ~2.4, A/B in one session), keys in
    insertion order, NaN and inf as null (valid JSON, where the stdlib writes NaN). Flask's own ``response`` writes
    the string. Requests are still parsed by the stdlib: orjson reads an integer past 64 bits as a float, and an id
    must stay an integer to be refused as an unknown item."""

    sort_keys = False  # also where the stdlib writes (below)

    def dumps(self, obj, **kwargs) -> str:
        try:
            return orjson.dumps(obj, default=self.default,
                                option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # what orjson cannot write (an integer past 64 bits, a lone surrogate): the stdlib
            return super().dumps(obj)


def create_app(config: ServerConfig) -> Flask:
    """The app: the JSON API under ``/api``, ``/openapi.json``, the web page at ``/`` and its static files."""
    from . import api, job_routes, openapi

    app = Flask(__name__, static_folder=STATIC_DIR, static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    app.json = OrjsonProvider(app)
    app.extensions["nearsight"] = State(config, CollectionHolder(config.collection, config.device))
    app.register_blueprint(api.bp)
    app.register_blueprint(job_routes.bp)
    job_routes.install(app, config)

    @app.before_request
    def check_host():
        if not host_allowed(request.host, config.allowed_hosts):
            return error_response(400, "host_not_allowed", "this server does not answer for the host named in the "
                                  "request; its operator can add it with --allowed-host")
        return None

    @app.get("/")
    def index():
        return send_from_directory(STATIC_DIR, "index.html", max_age=0)

    @app.get("/openapi.json")
    def openapi_document():
        encoders = app.extensions["nearsight"].holder.fresh().encoder_names
        return jsonify(openapi.document(token_required=config.token is not None,
                                        max_upload_bytes=config.max_upload_bytes, encoders=encoders))

    @app.errorhandler(NearsightError)
    def nearsight_error(exc: NearsightError):
        for cls, status, code in STATUS:
            if isinstance(exc, cls):
                return error_response(status, code, str(exc))
        LOG.error("unhandled nearsight error: %s", exc)
        return error_response(500, "internal_error", "the server could not answer this request")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        response = exc.get_response()  # keeps headers such as Allow (405) and WWW-Authenticate (401)
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if exc.code == 413:
            code, message = "request_too_large", (f"the request body is over the limit of {config.max_request_bytes:,} "
                                                  f"bytes (an image may be at most {config.max_upload_bytes:,} bytes)")
        response.set_data(_error_body(code, message))
        response.content_type = "application/json"
        return response

    @app.errorhandler(RecursionError)
    def too_deep(exc: RecursionError):  # a JSON body like [[[[...]]]] nested past Python's recursion limit
        return error_response(400, "invalid_query", "the request body is nested too deeply")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        LOG.exception("internal error")  # the traceback goes to the server log, never to the client
        return error_response(500, "internal_error", "the server could not answer this request")

    @app.after_request
    def security_headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy",
                                        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                                        "frame-ancestors 'none'; base-uri 'none'")
        return response

    return app


def _error_body(code: str, message: str) -> str:
    import json

    return json.dumps({"error": {"code": code, "message": _public(message)}})


def _public(message: str) -> str:
    """No server-side path in an answer (see guard.public_message)."""
    if not has_app_context() or "nearsight" not in current_app.extensions:
        return message
    return public_message(message, current_app.extensions["nearsight"].config.collection)


def error_response(status: int, code: str, message: str):
    response = jsonify({"error": {"code": code, "message": _public(message)}})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="nearsight"'
    return response


def warm_text_search(app: Flask) -> threading.Thread | None:
    """Embed one text with the collection's default text encoder in a background thread, so the first text search
    of a fresh server does not wait for the sentence tower to load (3.7 s measured on the demo page); searches are
    answered meanwhile, and one that needs the tower waits for the same load (the encoders lock it). None where
    the collection has no text encoder."""
    from ..retrieval.encoders import TEXT

    coll = app.extensions["nearsight"].holder.collection
    try:
        name = coll.default_encoder(TEXT)
    except NearsightError:
        return None

    def warm():
        try:
            coll.query_vector(name, text="a photo")
        except Exception:  # noqa: BLE001 - only a warm-up: the first text search reports a real fault itself
            LOG.debug("warming the text encoder %r failed", name, exc_info=True)

    thread = threading.Thread(target=warm, name="warm-text", daemon=True)
    thread.start()
    return thread


def install_reload_signal(app: Flask) -> None:
    """SIGHUP reopens the app's collection (in a thread, so the signal handler itself does no I/O)."""
    holder: CollectionHolder = app.extensions["nearsight"].holder

    def reload_safely():
        try:
            holder.reload()
        except Exception:  # a half-written collection: keep serving the one we have
            LOG.exception("reload of %s failed; still serving the previous state", holder.directory)

    signal.signal(signal.SIGHUP, lambda signum, frame: threading.Thread(target=reload_safely, daemon=True).start())
