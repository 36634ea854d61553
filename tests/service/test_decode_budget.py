"""One decoding budget for the whole service (issue 24): single uploads, batches and searches
take their decoded pixels from the same ``DECODE_MEMORY_MB``; a full budget is a 503 with
Retry-After (per file in a batch), an image needing more than all of it a 400, and nothing is
stored either way."""

from __future__ import annotations

import io
from collections.abc import Callable

from fastapi.testclient import TestClient
from PIL import Image

from app.api.main import create_app
from app.core.config import Settings
from app.ml.bundle.store import Bundle

from .conftest import Keys, snapshot
from .helpers import jpeg, sketch_png


def test_uploads_batches_and_searches_share_one_decoding_budget(
    make_settings: Callable[..., Settings], bundle: Bundle, keys: Keys
) -> None:
    settings = make_settings(DECODE_MEMORY_MB=16, DECODE_WAIT_SECONDS=0.3)
    with TestClient(create_app(settings, bundle=bundle)) as client:
        budget = client.app.state.ctx.decode_budget  # type: ignore[attr-defined]
        assert budget.total == 16 * 1048576
        empty = snapshot(client)

        big = io.BytesIO()
        Image.new("RGBA", (2000, 2000), (10, 20, 30, 40)).save(big, "PNG")
        r = client.post(
            "/api/v1/gallery",
            files={"image": ("big.png", big.getvalue(), "image/png")},
            headers=keys.operator,
        )
        assert r.status_code == 400
        assert (
            "needs about" in r.json()["detail"] and "decoding memory of 16 MB" in r.json()["detail"]
        )

        with budget.hold(budget.total, "another request's image"):
            single = client.post(
                "/api/v1/gallery",
                files={"image": ("a.jpg", jpeg(1), "image/jpeg")},
                headers=keys.operator,
            )
            search = client.post(
                "/api/v1/search",
                files={"sketch": ("s.png", sketch_png(1), "image/png")},
                headers=keys.investigator,
            )
            batch = client.post(
                "/api/v1/gallery/batch",
                files=[("images", (f"{i}.jpg", jpeg(10 + i), "image/jpeg")) for i in range(3)],
                headers=keys.operator,
            )
        for refused in (single, search):
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["Retry-After"]) > 0
            assert "decoding other large images" in refused.json()["detail"]
        assert batch.status_code == 200 and batch.headers["Retry-After"]
        assert [f["http_status"] for f in batch.json()["results"]] == [503, 503, 503]
        assert batch.json()["created"] == 0
        assert snapshot(client) == empty
        assert budget.used == 0

        again = client.post(
            "/api/v1/gallery",
            files={"image": ("a.jpg", jpeg(1), "image/jpeg")},
            headers=keys.operator,
        )
        assert again.status_code == 201
        assert budget.used == 0 and 0 < budget.peak <= budget.total
