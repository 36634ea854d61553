"""An unexpected exception is a JSON 500 on a connection that stays usable (real server)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.api.main import create_app
from app.core.config import Settings
from app.ml.bundle.store import Bundle
from app.services import gallery

from .conftest import Keys, running_server


@pytest.fixture
def server(settings: Settings, bundle: Bundle, keys: Keys) -> Iterator[tuple[str, Any]]:
    app = create_app(settings, bundle=bundle)
    with running_server(app) as base:
        yield base, app


def _local_address(response: httpx.Response) -> Any:
    return response.extensions["network_stream"].get_extra_info("client_addr")


def test_unexpected_error_is_json_500_and_keeps_the_connection(
    server: tuple[str, Any], keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _app = server

    def broken_list(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database exploded")

    monkeypatch.setattr(gallery, "list_items", broken_list)
    with httpx.Client(base_url=base, limits=httpx.Limits(max_connections=1)) as client:
        first = client.get("/healthz")
        assert first.status_code == 200
        connection = _local_address(first)
        for _ in range(5):
            failed = client.get("/api/v1/gallery", headers=keys.admin)
            assert failed.status_code == 500
            assert failed.json() == {"detail": "internal server error"}
            assert "database exploded" not in failed.text
            assert failed.headers.get("connection", "").lower() != "close"
            after = client.get("/api/v1/model", headers=keys.investigator)
            assert after.status_code == 200, after.text
            # The same TCP connection served the 500 and the next request.
            assert _local_address(failed) == connection
            assert _local_address(after) == connection
        metrics = client.get("/metrics").text
    assert 'route="/api/v1/gallery",status="500"' in metrics
