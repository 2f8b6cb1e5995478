"""Input limits, one source of truth: the catalog reader, the API settings and forms, and the
index all read these (a deployment may lower the API's through its settings, never raise them
past the index's)."""

from __future__ import annotations

DEFAULT_K = 5  # results per query when the caller does not say
MAX_K = 100  # results per API request (classify labels, search hits)
MAX_INDEX_K = 10_000  # results one index search may return (IndexPlan.max_k); >= MAX_K
MAX_TITLE_CHARS = 1000  # a product title, in the catalog and in requests
MAX_ATTRIBUTES_CHARS = 10_000  # a product's attributes as JSON text, in requests
MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # one uploaded image
MAX_JSON_DEPTH = 32  # nesting of arrays/objects in request JSON (bodies, the attributes field)
