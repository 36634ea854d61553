"""Schemathesis hooks for the API fuzz runs (loaded through ``SCHEMATHESIS_HOOKS``).

* Image strategies. The OpenAPI document says which image types an upload part takes
  (``encoding.contentType``); without a strategy for them schemathesis sends random bytes,
  which the server rightly refuses (400) before any model, index or database code runs.
  These make real, small images of those types, so positive cases go all the way through
  decoding, embedding, the index, the database and the search record.
* ``map_case``: a batch's one drawn image is sent as a one-item array (a file part).
* ``filter_failure``: the one rule a schema cannot state (``k2`` at most ``k1``).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image


def image_bytes(fmt: str, seed: int, width: int, height: int, grey: bool) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 2, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BILINEAR)
    if grey:
        img = img.convert("L")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _images(fmt: str) -> st.SearchStrategy[bytes]:
    return st.builds(
        image_bytes,
        st.just(fmt),
        st.integers(0, 2**32 - 1),
        st.integers(1, 160),
        st.integers(1, 320),
        st.booleans(),
    )


for _media_type, _fmt in (
    ("image/jpeg", "JPEG"),
    ("image/png", "PNG"),
    ("image/webp", "WEBP"),
    ("image/gif", "GIF"),
    ("image/bmp", "BMP"),
    ("image/tiff", "TIFF"),
):
    schemathesis.openapi.media_type(_media_type, _images(_fmt))

BATCH = "POST /api/v1/gallery/batch"
SEARCH = "POST /api/v1/search"


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """A batch's ``images`` is an array of files; with an image strategy schemathesis draws one
    image for it and sends it as a plain part without a filename (which Starlette, like most
    servers, reads as a text field). As a one-item array it is sent as a file part; on the
    wire, one part is exactly a one-item array."""
    body = case.body
    if case.operation.label == BATCH and isinstance(body, dict):
        images = body.get("images")
        if images is not None and not isinstance(images, list):
            body["images"] = [images]
    return case


@schemathesis.hook
def filter_failure(
    context: schemathesis.HookContext,
    failure: Any,
    case: schemathesis.Case,
    response: schemathesis.Response,
) -> bool:
    """Keep every failure but one: a schema-valid search with ``k2`` > ``k1``, refused (422,
    field ``k2``). ``k2`` at most ``k1`` is the service's documented rule (docs/service.md)
    and JSON Schema cannot compare two fields."""
    if failure.code != "ST202" or case.operation.label != SEARCH or response.status_code != 422:
        return True
    body = case.body if isinstance(case.body, dict) else {}
    k1, k2 = body.get("k1", 20), body.get("k2", 6)
    fields = [e.get("field") for e in response.json().get("errors") or []]
    k2_above_k1 = isinstance(k1, int) and isinstance(k2, int) and k2 > k1
    return not (k2_above_k1 and fields == ["k2"])
