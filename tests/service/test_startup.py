"""Starting the server from a bundle folder named by SKETCHREID_MODEL_DIR, as in production:
`sketchreid serve` and the app's own lifespan load it; a corrupt bundle is refused at start."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.cli.main import main
from app.core.config import get_settings
from app.errors import BundleError

from .helpers import jpeg, sketch_png


@pytest.fixture
def served_bundle(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, bundle_dir: Path
) -> Iterator[Path]:
    """A copy of the tiny bundle, named by the environment like a deployment would."""
    folder = tmp_path / "model_store" / "tiny"
    shutil.copytree(bundle_dir, folder)
    monkeypatch.setenv("SKETCHREID_MODEL_DIR", str(folder))
    monkeypatch.setenv("SKETCHREID_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SKETCHREID_DATABASE_URL", database_url)
    monkeypatch.setenv("SKETCHREID_INDEX_SYNC_SECONDS", "0")
    get_settings.cache_clear()
    yield folder
    get_settings.cache_clear()


def _exercise(app: Any, key: str) -> dict[str, Any]:
    headers = {"X-API-Key": key}
    with TestClient(app) as client:
        model = client.get("/api/v1/model", headers=headers).json()
        item = client.post(
            "/api/v1/gallery", files={"image": ("a.jpg", jpeg(1), "image/jpeg")}, headers=headers
        )
        assert item.status_code == 201, item.text
        found = client.post(
            "/api/v1/search",
            files={"sketch": ("s.png", sketch_png(1), "image/png")},
            headers=headers,
        )
        assert found.status_code == 200, found.text
        assert [r["gallery_id"] for r in found.json()["results"]] == [item.json()["id"]]
        assert found.json()["translated"] is True
    return dict(model)


def test_serve_loads_the_bundle_named_by_the_environment(
    served_bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: dict[str, Any] = {}

    def fake_run(app: Any, **kwargs: Any) -> None:  # instead of serving forever
        key = capsys.readouterr().out.strip().splitlines()[-1]
        assert key.startswith("skr_")  # the first admin key, printed once
        seen["kwargs"] = kwargs
        seen["model"] = _exercise(app, key)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    assert main(["serve", "--port", "8123"]) == 0
    assert seen["kwargs"]["port"] == 8123 and seen["kwargs"]["host"] == "127.0.0.1"
    model = seen["model"]
    assert model["name"] == "tiny" and model["translator"] is True
    manifest = (served_bundle / "manifest.json").read_text()
    assert model["manifest"]["members"][0]["sha256"] in manifest


def test_app_lifespan_loads_the_bundle_itself(served_bundle: Path) -> None:
    from app.cli.service_cmd import initial_admin_key

    key = initial_admin_key(get_settings())
    assert key is not None
    model = _exercise(create_app(get_settings()), key)  # no bundle passed: read MODEL_DIR
    assert model["name"] == "tiny"


def test_corrupt_translator_is_refused_at_start(
    served_bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = served_bundle / "translator.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))

    def must_not_run(app: Any, **kwargs: Any) -> None:
        raise AssertionError("the server started with a corrupt bundle")

    monkeypatch.setattr(uvicorn, "run", must_not_run)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "translator.pt" in err and "sha256 mismatch" in err
    app = create_app(get_settings())
    with pytest.raises(BundleError, match="sha256 mismatch"), TestClient(app):
        pass


def _blas_threads() -> set[int]:
    from threadpoolctl import threadpool_info

    return {int(p["num_threads"]) for p in threadpool_info() if p["user_api"] == "blas"}


def test_service_start_limits_numpy_blas_threads(
    served_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(3, user_api="blas"):  # put back afterwards for other tests
        assert _blas_threads() == {3}
        monkeypatch.setenv("SKETCHREID_BLAS_THREADS", "2")
        get_settings.cache_clear()
        with TestClient(create_app(get_settings())):
            assert _blas_threads() == {2}
        get_settings.cache_clear()
        monkeypatch.delenv("SKETCHREID_BLAS_THREADS")
        with TestClient(create_app(get_settings())):
            assert _blas_threads() == {1}  # the default
