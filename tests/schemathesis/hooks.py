"""Schemathesis hooks for tests/schemathesis/run.

Hypothesis draws the same few Idempotency-Key values again and again (``0``,
``A``...) with different bodies, which dropgate rightly answers with
``422 idempotency_key_reused``: a schema-valid request, but a reuse no client
makes on purpose. So a *valid* key is suffixed with a digest of the body: the
same key with the same body stays the same key (replays are still tested),
the same key with another body becomes another key. Invalid or missing keys
are left alone, so their rejections are still tested.
"""

import hashlib
import json
import re

import schemathesis

VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")
HEADER = "Idempotency-Key"


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers
    if not headers or HEADER not in headers:
        return
    key = headers[HEADER]
    if not isinstance(key, str) or not VALID_KEY.fullmatch(key):
        return
    try:
        body = json.dumps(case.body, sort_keys=True, default=str)
    except (TypeError, ValueError):
        body = repr(case.body)
    digest = hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    headers[HEADER] = f"{key[: 255 - 17]}.{digest}"
