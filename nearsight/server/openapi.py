"""The OpenAPI 3 document served at ``/openapi.json``, written by hand and kept in sync with the app by a test."""
from __future__ import annotations

import copy

from .. import __version__ as VERSION

ERROR = {"$ref": "#/components/responses/Error"}
ITEM_ID = {"name": "item_id", "in": "path", "required": True,
           "schema": {"type": "integer", "minimum": 0, "maximum": 2 ** 63 - 1}, "description": "Item id."}


def _errors(*codes: int) -> dict:
    return {str(code): ERROR for code in codes}


_SEARCH_KINDS = {
    "text": {"type": "string", "minLength": 1, "maxLength": 1000, "pattern": r"\S",
             "description": "Text query (encoders with a text tower)."},
    "image": {"type": "string", "format": "byte",
              "description": "The image file's bytes, base64 encoded (a data: URL is accepted). Never a path or URL."},
    "id": {"type": "integer", "minimum": 0, "maximum": 2 ** 63 - 1,
           "description": "Search by the embedding of an item already in the collection."},
    "vector": {"type": "array", "minItems": 1, "maxItems": 65536, "items": {"type": "number"},
               "description": "A query vector of the encoder's dimension."},
}

_FILTER = {
    "type": "object", "additionalProperties": False,
    "description": "Applied inside the nearest-neighbour search (k results come back however selective it is); "
                   "all given conditions must hold. A field not listed here is a 422 naming the fields; a "
                   "filter that matches nothing gives an empty result.",
    "properties": {
        "path_prefix": {"type": "string", "minLength": 1, "description": "Source path starts with this (a folder)."},
        "caption": {"type": "string", "minLength": 1,
                    "description": "Every word occurs in the caption (case-insensitive, whole words)."},
        **{name: {"type": "integer", "minimum": 0, "description": "Pixels, inclusive."}
           for name in ("min_width", "max_width", "min_height", "max_height")},
        "added_after": {"type": ["number", "string"], "description": "Indexed at or after: unix seconds or ISO 8601."},
        "added_before": {"type": ["number", "string"], "description": "Indexed before: unix seconds or ISO 8601."},
        "ids": {"type": "array", "items": {"type": "integer"}, "description": "Allow-list of item ids."},
        "exclude": {"type": "array", "items": {"type": "integer"}, "description": "Deny-list of item ids."},
    },
}
_RESULT_OPTIONS = {
    "filter": {"$ref": "#/components/schemas/Filter"},
    "exclude": {"type": "array", "maxItems": 10000, "items": {"type": "integer"},
                "description": "Item ids never returned (e.g. the query photo itself)."},
    "min_score": {"type": "number", "description": "Drop results whose score is below this."},
    "min_similarity": {"type": "number", "minimum": 0, "maximum": 1,
                       "description": "Drop results whose similarity is below this."},
    "collapse": {"oneOf": [{"type": "boolean"}, {"type": "number", "exclusiveMinimum": 0, "maximum": 1}],
                 "description": "One result per group of near-copies, with the group's size in group_size: "
                                "true (copies by the threshold measured for the encoder), or a similarity "
                                "threshold (the units of a result's similarity)."},
}
_FORM_OPTIONS = {
    "filter": {"type": "string", "description": "The Filter object as a JSON string."},
    "exclude": {"type": "string", "description": "Comma-separated item ids."},
    "min_score": {"type": "number"}, "min_similarity": {"type": "number", "minimum": 0, "maximum": 1},
    "collapse": {"type": "boolean"},
}
_RESULT = {
    "type": "object", "additionalProperties": False,
    "required": ["id", "score", "similarity", "caption", "width", "height", "sha256", "group_size", "thumbnail_url"],
    "properties": {"id": {"type": "integer"},
                   "score": {"type": "number", "description": "Higher is closer (inner product, or "
                                                             "minus the squared L2 distance)."},
                   "similarity": {"type": "number", "minimum": 0, "maximum": 1,
                                  "description": "For people: the cosine for inner-product encoders, "
                                                 "exp(-distance / mean distance of random pairs) for L2 ones."},
                   "caption": {"type": ["string", "null"]},
                   "width": {"type": "integer"}, "height": {"type": "integer"},
                   "sha256": {"type": "string", "description": "Content hash of the item's file."},
                   "group_size": {"type": "integer", "minimum": 1,
                                  "description": "With collapse: near-copies this result stands for."},
                   "thumbnail_url": {"type": "string"}},
}

_SCHEMAS = {
    "Filter": _FILTER,
    "SearchResult": _RESULT,
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {"type": "object", "required": ["code", "message"], "additionalProperties": False,
                                 "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
    },
    "Term": {
        "type": "object", "additionalProperties": False,
        "description": "One term of a weighted query: exactly one of text, image, id, vector, plus a weight.",
        "properties": {**_SEARCH_KINDS, "weight": {"type": "number", "minimum": -1e6, "maximum": 1e6, "default": 1}},
        "oneOf": [{"required": [kind]} for kind in _SEARCH_KINDS],
    },
    "SearchRequest": {
        "type": "object", "additionalProperties": False,
        "description": "Exactly one of text, image, id, vector, query.",
        "properties": {
            **_SEARCH_KINDS,
            "query": {"type": "array", "minItems": 1, "maxItems": 32, "items": {"$ref": "#/components/schemas/Term"},
                      "description": "Query arithmetic: the weighted sum of the terms' vectors, "
                                     "e.g. [{\"text\": \"beach\", \"weight\": 1}, {\"id\": 12, \"weight\": -0.5}]."},
            "k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
            "offset": {"type": "integer", "minimum": 0, "maximum": 10000, "default": 0},
            "encoder": {"type": "string", "minLength": 1,
                        "description": "Encoder to search with (default: the best image encoder the collection holds; for text, the first that takes text)."},
            "prefilter": {"type": "integer", "minimum": 1, "maximum": 100000,
                          "description": "Shortlist this many items in the encoder's fitted PCA space, then "
                                         "re-rank them exactly (422 when no PCA is fitted)."},
            "batch": {"type": "array", "minItems": 1, "maxItems": 256,
                      "items": {"type": "object", "additionalProperties": False, "properties": _SEARCH_KINDS,
                                "oneOf": [{"required": [kind]} for kind in _SEARCH_KINDS]},
                      "description": "Many queries in one call; the answer has one result list per query "
                                     "under batch, in order."},
            **_RESULT_OPTIONS,
        },
        "oneOf": [{"required": [kind]} for kind in (*_SEARCH_KINDS, "query", "batch")],
    },
    "SearchUpload": {
        "type": "object", "required": ["image"], "additionalProperties": False,
        "properties": {"image": {"type": "string", "format": "binary"},
                       "k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
                       "offset": {"type": "integer", "minimum": 0, "maximum": 10000, "default": 0},
                       "encoder": {"type": "string", "minLength": 1},
                       "prefilter": {"type": "integer", "minimum": 1, "maximum": 100000},
                       **_FORM_OPTIONS},
    },
    "SearchResponse": {
        "type": "object", "required": ["took_ms", "encoder"], "additionalProperties": False,
        "description": "results for one query, or batch (one {results} per query) for a batch.",
        "properties": {
            "results": {"type": "array", "items": {"$ref": "#/components/schemas/SearchResult"}},
            "batch": {"type": "array", "items": {
                "type": "object", "required": ["results"], "additionalProperties": False,
                "properties": {"results": {"type": "array", "items": {"$ref": "#/components/schemas/SearchResult"}}}}},
            "took_ms": {"type": "number"},
            "encoder": {"type": "string"},
        },
    },
    "ItemPage": {
        "type": "object", "required": ["items", "total", "order"], "additionalProperties": False,
        "properties": {
            "items": {"type": "array", "items": {
                "type": "object", "additionalProperties": False,
                "required": ["id", "caption", "width", "height", "sha256", "added", "thumbnail_url"],
                "properties": {"id": {"type": "integer"}, "caption": {"type": ["string", "null"]},
                               "width": {"type": "integer"}, "height": {"type": "integer"},
                               "sha256": {"type": "string"},
                               "added": {"type": ["number", "null"], "description": "Unix time it was indexed."},
                               "thumbnail_url": {"type": "string"}}}},
            "total": {"type": "integer", "description": "Live items in the collection."},
            "order": {"type": "string"},
        },
    },
    "Item": {
        "type": "object", "additionalProperties": False,
        "required": ["id", "caption", "width", "height", "filename", "bytes", "sha256", "duplicates",
                     "thumbnail_url", "image_url"],
        "properties": {"id": {"type": "integer"}, "caption": {"type": ["string", "null"]},
                       "width": {"type": "integer"}, "height": {"type": "integer"},
                       "filename": {"type": "string", "description": "File name of the source (no folder)."},
                       "bytes": {"type": "integer"}, "sha256": {"type": "string"},
                       "duplicates": {"type": "integer", "description": "Other sources with the same content."},
                       "thumbnail_url": {"type": "string"}, "image_url": {"type": "string"}},
    },
    "Stats": {
        "type": "object", "required": ["items", "encoders", "default_encoder", "limits"],
        "properties": {
            "items": {"type": "integer"},
            "encoders": {"type": "array", "items": {
                "type": "object", "required": ["name", "dim", "metric", "modalities", "embedded", "index"],
                "properties": {"name": {"type": "string"}, "dim": {"type": "integer"},
                               "metric": {"type": "string", "enum": ["ip", "l2"]},
                               "modalities": {"type": "array", "items": {"type": "string"}},
                               "kind": {"type": "string", "description": "The encoder's kind (a trained "
                                                                         "model's is triplet, whatever its name)."},
                               "helper": {"type": "boolean", "description": "Made for colorization or scene "
                                                                           "completion rather than for searching."},
                               "embedded": {"type": "integer"},
                               "index": {"type": ["object", "null"]},
                               "pca_dim": {"type": ["integer", "null"]}}}},
            "default_encoder": {"type": "object", "properties": {"image": {"type": ["string", "null"]},
                                                                 "text": {"type": ["string", "null"]}}},
            "limits": {"type": "object"},
            "text": {"type": "object", "description": "What text search can do here.", "properties": {
                "encoder": {"type": ["string", "null"], "description": "The encoder text queries use, if any."},
                "examples": {"type": "array", "items": {"type": "string"},
                             "description": "Queries the trained text model learnt (for the page's placeholder)."},
                "feedback": {"type": "boolean", "description": "Whether POST /api/feedback records."}}},
        },
    },
}

_IMAGE_B64 = {"type": "string", "format": "byte",
              "description": "An image file's bytes, base64 encoded (a data: URL is accepted). Never a path or URL."}
_ITEM = {"type": "integer", "minimum": 0, "maximum": 2 ** 63 - 1}
_DATA_URL = {"type": "string", "pattern": "^data:image/jpeg;base64,",
             "description": "The result, a JPEG as a data: URL."}
_FILE = {"type": "string", "format": "binary"}


def _neighbors(default: int) -> dict:
    return {"type": "integer", "minimum": 1, "maximum": 64, "default": default,
            "description": "How many nearest neighbours to take colours from."}


_COMPLETE_N = {"type": "integer", "minimum": 1, "maximum": 50, "default": 6,
               "description": "How many composites (each costs a full-size seam and Poisson blend)."}
_IMAGE_ID = dict(_ITEM, description="A collection item to use as the photo instead of uploading it (it is then "
                                    "left out of the photos the result is made from).")
_PER_REGION = {"type": "boolean", "default": False,
               "description": "Transfer per cell of a 3x3 grid of aligned regions instead of the whole image."}

_SCHEMAS.update({
    "CompleteRequest": {
        "type": "object", "required": ["mask"], "additionalProperties": False,
        "description": "The photo (image, or id of an item) and a mask of its size: white = the hole to fill "
                       "(an opaque image; transparent pixels count as white).",
        "properties": {"image": _IMAGE_B64, "id": _IMAGE_ID, "mask": _IMAGE_B64, "n": _COMPLETE_N},
        "oneOf": [{"required": ["image"]}, {"required": ["id"]}],
    },
    "CompleteUpload": {
        "type": "object", "required": ["image", "mask"], "additionalProperties": False,
        "properties": {"image": _FILE, "mask": _FILE, "n": _COMPLETE_N},
    },
    "CompleteResponse": {
        "type": "object", "required": ["completions", "took_ms"], "additionalProperties": False,
        "properties": {
            "completions": {"type": "array", "description": "Best first.", "items": {
                "type": "object", "additionalProperties": False,
                "required": ["id", "score", "terms", "placement", "image"],
                "properties": {
                    "id": {"type": "integer", "description": "The item whose pixels fill the hole."},
                    "score": {"type": ["number", "null"], "description": "Higher is better."},
                    "terms": {"type": "object", "additionalProperties": {"type": ["number", "null"]},
                              "description": "Raw and standardised costs: scene, gist, colour, context, texture, "
                                             "seam, seam_full, z_scene, z_context, z_texture, z_seam."},
                    "placement": {"type": "object", "required": ["dy", "dx", "scale"], "additionalProperties": False,
                                  "properties": {"dy": {"type": "integer"}, "dx": {"type": "integer"},
                                                 "scale": {"type": "number"}},
                                  "description": "Where the source photo's top-left corner went, and its scale."},
                    "image": _DATA_URL}}},
            "skipped": {"type": "object", "additionalProperties": False,
                        "properties": {"excluded": {"type": "array", "items": {"type": "integer"}},
                                       "near_duplicates": {"type": "array", "items": {"type": "integer"}},
                                       "crops": {"type": "array", "items": {"type": "integer"}}},
                        "description": "Items left out as copies of the photo itself (the item named by id, or "
                                       "the same content), near-duplicates of it, and crops of it (or photos "
                                       "it was cropped from), mirrored or not."},
            "took_ms": {"type": "number"},
        },
    },
    "ColorizeRequest": {
        "type": "object", "additionalProperties": False,
        "description": "A gray or sepia photo (image, or id of an item); a colour photo is made gray first.",
        "properties": {"image": _IMAGE_B64, "id": _IMAGE_ID, "n": _neighbors(8)},
        "oneOf": [{"required": ["image"]}, {"required": ["id"]}],
    },
    "ColorizeUpload": {
        "type": "object", "required": ["image"], "additionalProperties": False,
        "properties": {"image": _FILE, "n": _neighbors(8)},
    },
    "ColorizeResponse": {
        "type": "object", "required": ["image", "neighbor_ids", "usage", "warnings", "took_ms"],
        "additionalProperties": False,
        "properties": {"image": _DATA_URL,
                       "neighbor_ids": {"type": "array", "items": {"type": "integer"},
                                        "description": "The items the colours came from, best match first."},
                       "usage": {"type": "array", "items": {"type": "number"},
                                 "description": "Share of the pixels each neighbour coloured."},
                       "warnings": {"type": "array", "items": {"type": "string"}},
                       "took_ms": {"type": "number"}},
    },
    "RecolorRequest": {
        "type": "object", "additionalProperties": False,
        "description": "A photo (image, or id of an item) and at most one of like, reference; with neither, "
                       "the mean colours of the photo's n nearest neighbours.",
        "properties": {"image": _IMAGE_B64, "id": _IMAGE_ID,
                       "like": dict(_ITEM, description="Take the colours of this item."),
                       "reference": dict(_IMAGE_B64, description="Take the colours of this image (base64)."),
                       "n": _neighbors(5), "per_region": _PER_REGION},
        "oneOf": [{"required": ["image"]}, {"required": ["id"]}],
        "not": {"required": ["like", "reference"]},
    },
    "RecolorUpload": {
        "type": "object", "required": ["image"], "additionalProperties": False,
        "properties": {"image": _FILE, "reference": _FILE, "like": _ITEM, "n": _neighbors(5),
                       "per_region": _PER_REGION},
    },
    "RecolorResponse": {
        "type": "object", "required": ["image", "reference_ids", "warnings", "took_ms"], "additionalProperties": False,
        "properties": {"image": _DATA_URL,
                       "reference_ids": {"type": "array", "items": {"type": "integer"},
                                         "description": "The items whose colours were used (empty for an "
                                                        "uploaded reference)."},
                       "warnings": {"type": "array", "items": {"type": "string"}},
                       "took_ms": {"type": "number"}},
    },
})

_BINARY = {"schema": {"type": "string", "format": "binary"}}

# -- heavy image jobs (job_routes.py) ---------------------------------------------------------------
_METHODS = ("complete", "colorize", "recolor")
_JOB_STATES = ["queued", "running", "done", "failed", "cancelled"]
_SCHEMAS["JobStatus"] = {
    "type": "object", "additionalProperties": False,
    "required": ["id", "method", "state", "stage", "fraction", "queue_position", "cancel_requested", "queued_s",
                 "run_s", "status_url"],
    "properties": {
        "id": {"type": "string"}, "method": {"type": "string", "enum": list(_METHODS)},
        "state": {"type": "string", "enum": _JOB_STATES},
        "stage": {"type": ["string", "null"], "description": "The method's current stage while running."},
        "fraction": {"type": "number", "minimum": 0, "maximum": 1, "description": "Rough share of the work done."},
        "queue_position": {"type": "integer", "minimum": 0, "description": "1 = runs next; 0 = not waiting."},
        "cancel_requested": {"type": "boolean"},
        "queued_s": {"type": "number"}, "run_s": {"type": ["number", "null"]},
        "expires_in_s": {"type": "number", "description": "A finished job is forgotten (404) after this."},
        "status_url": {"type": "string"}, "result_url": {"type": "string", "description": "Once done."},
        "error": {"$ref": "#/components/schemas/Error/properties/error", "description": "Once failed."},
    },
}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
_ASYNC = {"name": "async", "in": "query", "required": False, "schema": {"type": "string", "enum": ["1", "true"]},
          "description": "Answer 202 with the job's status at once instead of waiting for the result."}
_JOB_ACCEPTED = {"description": "Queued (or already running); poll the Location / status_url.",
                 "headers": {"Location": {"schema": {"type": "string"}}},
                 "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobStatus"}}}}
_JOB_STATUS = {"application/json": {"schema": {"$ref": "#/components/schemas/JobStatus"}}}
_QUEUE_FULL = {"description": "Every worker is busy and the job queue is full (code queue_full); retry after "
                              "Retry-After seconds.",
               "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _job_paths() -> dict:
    method = {"name": "method", "in": "query", "required": True, "schema": {"type": "string", "enum": list(_METHODS)}}
    any_of = {kind: {"oneOf": [{"$ref": f"#/components/schemas/{m.capitalize()}{kind}"} for m in _METHODS]}
              for kind in ("Request", "Upload", "Response")}
    return {
        "/api/jobs": {"post": {
            "operationId": "submitJob", "summary": "Submit a complete, colorize or recolor job (the body of its "
                                                   "route); answered at once.",
            "parameters": [method],
            "requestBody": {"required": True, "content": {"application/json": {"schema": any_of["Request"]},
                                                          "multipart/form-data": {"schema": any_of["Upload"]}}},
            "responses": {"202": _JOB_ACCEPTED, "503": _QUEUE_FULL, **_errors(400, 401, 404, 413, 415, 422)},
        }},
        "/api/jobs/{job_id}": {
            "get": {"operationId": "getJob", "summary": "A job's state, stage, fraction done and queue position.",
                    "parameters": [_JOB_ID],
                    "responses": {"200": {"description": "The job.", "content": _JOB_STATUS}, **_errors(401, 404)}},
            "delete": {"operationId": "cancelJob", "summary": "Cancel a queued job, or stop a running one at its "
                                                              "next stage.",
                       "parameters": [_JOB_ID],
                       "responses": {"200": {"description": "Cancelled (it was queued).", "content": _JOB_STATUS},
                                     "202": {"description": "Cancel requested; the running job stops at its next "
                                                            "stage.", "content": _JOB_STATUS},
                                     **_errors(401, 404, 409)}},
        },
        "/api/jobs/{job_id}/result": {"get": {
            "operationId": "getJobResult", "summary": "A done job's answer (the same as its route's); a failed "
                                                      "job's error with its status; 409 before it is done.",
            "parameters": [_JOB_ID],
            "responses": {"200": {"description": "The method's answer.",
                                  "content": {"application/json": {"schema": any_of["Response"]}}},
                          **_errors(400, 401, 404, 409, 413, 415, 422, 500)},
        }},
    }


def _image_method(operation: str, summary: str, schema: str, answer: str) -> dict:
    return {"post": {
        "operationId": operation, "summary": summary,
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}Request"}},
            "multipart/form-data": {"schema": {"$ref": f"#/components/schemas/{schema}Upload"}}}},
        "parameters": [_ASYNC],
        "responses": {"200": {"description": answer, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}Response"}}}},
            "202": _JOB_ACCEPTED, "503": _QUEUE_FULL, **_errors(400, 401, 404, 413, 415, 422)},
    }}


def _paths() -> dict:
    return {
        "/api/search": {"post": {
            "operationId": "search", "summary": "Search by text, image, id, vector or a weighted query.",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/SearchRequest"}},
                "multipart/form-data": {"schema": {"$ref": "#/components/schemas/SearchUpload"}}}},
            "responses": {"200": {"description": "Ranked results, best first.", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/SearchResponse"}}}},
                **_errors(400, 401, 404, 413, 415, 422, 503)},
        }},
        "/api/complete": _image_method(
            "complete", "Scene completion (Hays & Efros 2007): fill the mask's hole from the collection's photos "
                        "(needs the gist encoder, else 422).", "Complete", "Composites, best first."),
        "/api/colorize": _image_method(
            "colorize", "Colour a gray photo from its nearest neighbours (needs gist-gray or tiny-gray, else 422).",
            "Colorize", "The coloured photo and where its colours came from."),
        "/api/recolor": _image_method(
            "recolor", "Reinhard colour transfer toward an item, an uploaded reference or the photo's neighbours.",
            "Recolor", "The recoloured photo."),
        "/api/items": {"get": {
            "operationId": "browse", "summary": "Items to look through without a query: most recent first, or "
                                                "shuffled (a fixed seed pages without repeats).",
            "parameters": [
                {"name": "k", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 30}},
                {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
                {"name": "order", "in": "query", "schema": {"type": "string", "enum": ["recent", "random"],
                                                            "default": "recent"}},
                {"name": "seed", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}}],
            "responses": {"200": {"description": "A page of items.", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ItemPage"}}}}, **_errors(400, 401)},
        }},
        "/api/items/{item_id}": {"get": {
            "operationId": "getItem", "summary": "An item's metadata.", "parameters": [ITEM_ID],
            "responses": {"200": {"description": "The item.", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}}, **_errors(401, 404)},
        }},
        "/api/items/{item_id}/thumbnail": {"get": {
            "operationId": "getThumbnail", "summary": "An item's JPEG thumbnail (cacheable, with an ETag).",
            "parameters": [ITEM_ID, {"name": "If-None-Match", "in": "header", "required": False,
                                     "schema": {"type": "string"}}],
            "responses": {"200": {"description": "JPEG thumbnail.", "content": {"image/jpeg": _BINARY}},
                          "304": {"description": "Not modified (the ETag matched)."}, **_errors(401, 404)},
        }},
        "/api/items/{item_id}/image": {"get": {
            "operationId": "getImage", "summary": "The original image file, while the indexed file exists unchanged.",
            "parameters": [ITEM_ID],
            "responses": {"200": {"description": "The original file.", "content": {"image/*": _BINARY}},
                          "304": {"description": "Not modified."}, **_errors(401, 404)},
        }},
        "/api/stats": {"get": {
            "operationId": "getStats", "summary": "Item count, encoders, default encoders, limits.",
            "responses": {"200": {"description": "Collection statistics.", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Stats"}}}}, **_errors(401)},
        }},
        "/api/feedback": {"post": {
            "operationId": "recordFeedback",
            "summary": "Record the result of a text search the user opened and those ranked above it they passed "
                       "over, as training triples for `nearsight train`. Only with `serve --feedback` (403 otherwise).",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["text", "opened"], "additionalProperties": False,
                "properties": {"text": _SEARCH_KINDS["text"], "opened": _ITEM,
                               "passed_over": {"type": "array", "maxItems": 1000, "items": _ITEM}}}}}},
            "responses": {"200": {"description": "Recorded.", "content": {"application/json": {"schema": {
                "type": "object", "required": ["recorded"], "properties": {"recorded": {"type": "boolean"}}}}}},
                **_errors(400, 401, 403, 404, 415)},
        }},
        "/api/health": {"get": {
            "operationId": "health", "summary": "Liveness probe; open even when a token is configured.",
            "security": [],
            "responses": {"200": {"description": "The server is up.", "content": {"application/json": {"schema": {
                "type": "object", "required": ["status"], "properties": {"status": {"type": "string",
                                                                                  "enum": ["ok"]}}}}}}},
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document.", "security": [],
            "responses": {"200": {"description": "OpenAPI 3 document.",
                                  "content": {"application/json": {"schema": {"type": "object"}}}}},
        }},
        "/": {"get": {
            "operationId": "webPage", "summary": "The search web page.", "security": [],
            "responses": {"200": {"description": "HTML page.", "content": {"text/html": {"schema": {"type": "string"}}}}},
        }},
    }


def document(token_required: bool = False, max_upload_bytes: int = 20 * 1024 * 1024,
             encoders: list[str] | None = None) -> dict:
    """The OpenAPI 3.1 document; with ``token_required`` the API routes declare bearer auth, and
    ``encoders`` (the served collection's) become the enum of the ``encoder`` field."""
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "nearsight", "version": VERSION,
                 "description": "Image retrieval over a nearsight collection. Errors are "
                                "{\"error\": {\"code\", \"message\"}}. Uploaded images may be at most "
                                f"{max_upload_bytes:,} bytes. The server never fetches URLs."},
        "paths": {**_paths(), **_job_paths()},
        "components": {
            "schemas": copy.deepcopy(_SCHEMAS),
            "responses": {"Error": {"description": "An error.", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    if encoders:
        schemas = doc["components"]["schemas"]
        for name in ("SearchRequest", "SearchUpload"):
            schemas[name]["properties"]["encoder"]["enum"] = list(encoders)
    if token_required:
        doc["security"] = [{"bearer": []}]
    else:  # nothing needs auth: drop the 401s so the document says what the server does
        for methods in doc["paths"].values():
            for op in methods.values():
                op["responses"].pop("401", None)
    return doc
