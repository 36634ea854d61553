"""The served backend (SKETCHREID_BACKEND) and precision (SKETCHREID_PRECISION): ONNX
exported once into DATA_DIR/onnx, checked against the bundle at every start, re-made when
altered; auto picks ONNX Runtime for fp32 on the CPU; int8 quantised once into
DATA_DIR/onnx/<digest>-int8, calibrated on synthetic people or a configured folder."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.api.main import create_app
from app.core.config import Settings, load_settings
from app.errors import SketchReidError
from app.ml.bundle.onnx_files import ONNX_MANIFEST, read_onnx_manifest
from app.ml.bundle.onnx_int8 import INT8_MIN_COSINE, INT8_MIN_DIFFERENCE
from app.ml.bundle.onnx_runtime import OnnxEmbedder
from app.ml.bundle.store import Bundle, load_bundle
from app.ml.data.synth import generate_synthetic
from app.services.model import int8_cache_dir, load_model, onnx_cache_dir

from .conftest import Keys, create_keys
from .helpers import sketch_png


@pytest.fixture(params=["sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite only: the backend does not touch the database."""
    path = tmp_path / "sketchreid.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


def _search_once(client: TestClient, keys: Keys) -> None:
    r = client.post(
        "/api/v1/search",
        files={"sketch": ("s.png", sketch_png(0), "image/png")},
        data={"top_k": "5"},
        headers=keys.investigator,
    )
    assert r.status_code == 200, r.text


def test_onnx_backend_exports_once_and_serves_the_same_vectors(
    make_settings: Callable[..., Settings], bundle: Bundle
) -> None:
    settings = make_settings(BACKEND="onnx")
    served = load_model(settings)
    assert isinstance(served.embedder, OnnxEmbedder) and served.translator is not None
    assert served.inference == {"backend": "onnx", "precision": "fp32"}
    folder = onnx_cache_dir(settings, served)
    assert folder.parent == settings.DATA_DIR / "onnx" and (folder / ONNX_MANIFEST).is_file()
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = load_model(settings)  # reuses the verified export
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 32, 3), np.uint8)) for _ in range(4)]
    np.testing.assert_allclose(
        again.embedder.embed(images), bundle.embedder.embed(images), atol=1e-5
    )


def test_an_altered_cached_export_is_made_again(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(BACKEND="onnx")
    folder = onnx_cache_dir(settings, load_model(settings))
    original = (folder / "m0.onnx").read_bytes()
    (folder / "m0.onnx").write_bytes(original[:-10] + b"0123456789")
    served = load_model(settings)
    assert isinstance(served.embedder, OnnxEmbedder)
    assert (folder / "m0.onnx").read_bytes() == original


def test_auto_runs_onnx_for_fp32_and_torch_for_bf16(
    make_settings: Callable[..., Settings],
) -> None:
    assert load_model(make_settings(BACKEND="auto")).inference["backend"] == "onnx"
    bf16 = load_model(make_settings(BACKEND="auto", PRECISION="bf16"))
    assert bf16.inference == {"backend": "torch", "precision": "bf16"}
    assert load_model(make_settings(BACKEND="torch")).inference["backend"] == "torch"


def test_the_model_route_says_how_it_runs_and_search_works(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(BACKEND="onnx")
    keys = create_keys(settings)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        model = client.get("/api/v1/model", headers=keys.investigator)
        assert model.status_code == 200
        assert model.json()["inference"] == {"backend": "onnx", "precision": "fp32"}
        _search_once(client, keys)


def test_int8_is_built_once_calibrated_and_serves_a_search(
    make_settings: Callable[..., Settings], random_bundle_dir: Path
) -> None:
    """On tests/conftest.py's random bundle: the service's tiny bundle centres its embeddings
    by a bias that cancels the mean feature, and int8 (lowest cosine ~0.977 to fp32) is
    rightly refused for it."""
    settings = make_settings(
        MODEL_DIR=random_bundle_dir, BACKEND="onnx", PRECISION="int8", INT8_CALIBRATION_IMAGES=6
    )
    served = load_model(settings)
    assert served.inference == {"backend": "onnx", "precision": "int8"}
    folder = int8_cache_dir(settings, served)
    assert folder.name == onnx_cache_dir(settings, served).name + "-int8"
    record = read_onnx_manifest(folder)
    assert record.precision == "int8" and record.quantization is not None
    assert record.quantization.calibration.source.startswith("synthetic generator, 6 people")
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    keys = create_keys(settings)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        model = client.get("/api/v1/model", headers=keys.investigator)
        assert model.json()["inference"] == {"backend": "onnx", "precision": "int8"}
        _search_once(client, keys)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps  # reused
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 32, 3), np.uint8)) for _ in range(4)]
    have = served.embedder.embed(images)
    want = load_bundle(random_bundle_dir).embedder.embed(images)
    assert float((have * want).sum(1).min()) >= INT8_MIN_COSINE
    assert float(np.abs(have - want).max()) > INT8_MIN_DIFFERENCE


def test_int8_calibrates_on_the_configured_folder_and_refuses_a_bad_one(
    make_settings: Callable[..., Settings], tmp_path: Path, random_bundle_dir: Path
) -> None:
    root = tmp_path / "calibration"
    generate_synthetic(root, 4, seed=9)
    settings = make_settings(
        MODEL_DIR=random_bundle_dir,
        BACKEND="auto",
        PRECISION="int8",
        INT8_CALIBRATION_DIR=root,
        INT8_CALIBRATION_IMAGES=3,
    )
    served = load_model(settings)
    record = read_onnx_manifest(int8_cache_dir(settings, served))
    assert record.quantization is not None
    assert record.quantization.calibration.source.startswith(str(root))
    assert (record.quantization.calibration.photos, record.quantization.calibration.sketches) == (
        3,
        3,
    )
    (root / "photo").rename(tmp_path / "elsewhere")
    fresh = make_settings(
        MODEL_DIR=random_bundle_dir,
        DATA_DIR=tmp_path / "fresh",
        BACKEND="onnx",
        PRECISION="int8",
        INT8_CALIBRATION_DIR=root,
    )
    with pytest.raises(SketchReidError, match="no photo/ folder"):
        load_model(fresh)


def test_int8_with_the_torch_backend_is_refused_with_a_reason() -> None:
    with pytest.raises(SketchReidError, match="PRECISION=int8 runs ONNX Runtime's quantised"):
        load_settings(BACKEND="torch", PRECISION="int8")
    with pytest.raises(SketchReidError, match="PRECISION=int8 runs on the CPU"):
        load_settings(BACKEND="auto", PRECISION="int8", MODEL_DEVICE="cuda")


@pytest.mark.parametrize("threads", [1, 2, 0])
def test_inference_threads_set_every_pass_and_idle_threads_sleep(
    make_settings: Callable[..., Settings], keys: Keys, threads: int
) -> None:
    """INFERENCE_THREADS (0: PyTorch's own count, left as it is) is what PyTorch and each
    ONNX Runtime session run with; the sessions' idle threads do not spin."""
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # neither 1 nor 2: 0 must leave it
        settings = make_settings(BACKEND="onnx", INFERENCE_THREADS=threads)
        want = threads or 3
        served = load_model(settings)
        assert torch.get_num_threads() == want
        assert isinstance(served.embedder, OnnxEmbedder)
        sessions = [*served.embedder.sessions, served.translator.session]  # type: ignore[union-attr]
        for session in sessions:
            options = session.get_session_options()
            assert options.intra_op_num_threads == want
            assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        with TestClient(create_app(settings, bundle=served)) as client:
            model = client.get("/api/v1/model", headers=keys.investigator).json()
        assert model["inference_threads"] == want
    finally:
        torch.set_num_threads(before)
