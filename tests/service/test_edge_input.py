"""Input at the edges of what the types allow: a 4xx with a message, never a 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from .conftest import Keys, snapshot, upload
from .helpers import jpeg

BEYOND_INT64 = 2**63  # 9223372036854775808: one more than the largest database id
INT64_MAX = 2**63 - 1


@pytest.mark.parametrize("item_id", [BEYOND_INT64, 10**30, INT64_MAX, -1, -BEYOND_INT64, 0])
@pytest.mark.parametrize(
    ("method", "template"),
    [
        ("GET", "/api/v1/gallery/{}"),
        ("GET", "/api/v1/gallery/{}/image"),
        ("DELETE", "/api/v1/gallery/{}"),
        ("POST", "/api/v1/apikeys/{}/revoke"),
    ],
)
def test_ids_beyond_the_database_range_are_404(
    client: TestClient, keys: Keys, method: str, template: str, item_id: int
) -> None:
    r = client.request(method, template.format(item_id), headers=keys.admin)
    assert r.status_code == 404, r.text
    assert str(item_id) in r.json()["detail"]


@pytest.mark.parametrize("offset", [BEYOND_INT64, 10**30, -BEYOND_INT64])
def test_offset_beyond_the_database_range_is_422(
    client: TestClient, keys: Keys, offset: int
) -> None:
    r = client.get(f"/api/v1/gallery?offset={offset}", headers=keys.admin)
    assert r.status_code == 422, r.text
    assert "offset" in r.json()["detail"]


def test_largest_offset_is_an_empty_page(client: TestClient, keys: Keys) -> None:
    assert upload(client, keys.operator, jpeg(1)).status_code == 201
    r = client.get(f"/api/v1/gallery?offset={INT64_MAX}", headers=keys.admin)
    assert r.status_code == 200, r.text
    assert r.json()["items"] == [] and r.json()["total"] == 1
    assert r.json()["next_offset"] is None
    assert snapshot(client)["items"] == 1
