"""Flip test-time augmentation as served, on both backends: with a bundle whose manifest
turns it on, a person photographed facing the other way (the mirror image) is found with the
same score, and a mirrored sketch finds the same list.

The oracle is that symmetry, not the embedder's code: every embedding is the fusion of an
image's and its mirror's, so an image and its mirror embed alike. The other service tests
run a bundle with flip TTA off (tests/service/helpers.py), where the two differ (checked
below, so that this test can tell a server that does not flip).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from app.api.main import create_app
from app.core.config import Settings
from app.ml.bundle.store import Bundle
from app.ml.images import load_image

from .conftest import create_keys, upload
from .helpers import build_tiny_bundle, encode, person_image, sketch_png


@pytest.fixture(params=["sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """SQLite only: flipping does not touch the database."""
    path = tmp_path / "sketchreid.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def flip_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service tests' tiny bundle (same weights) with flip TTA on, without a translator
    (the sketches are searched as drawn; one network less to export to ONNX)."""
    return build_tiny_bundle(
        tmp_path_factory.mktemp("bundles") / "flip", translator=False, tta_flip=True
    )


def _png(image: Image.Image) -> bytes:
    return encode(image, "PNG")


def test_without_flip_a_mirror_image_embeds_otherwise(bundle: Bundle) -> None:
    # Guards the test below: were the tiny model mirror-symmetric by itself, it could not
    # tell a server that flips from one that does not.
    assert bundle.manifest.tta_flip is False
    person = person_image(0)
    pair = bundle.embedder.embed([person, ImageOps.mirror(person)])
    assert np.abs(pair[0] - pair[1]).max() > 1e-3  # 100 times the tolerance below
    sketch = load_image(sketch_png(1))
    drawn = bundle.embedder.embed([sketch, ImageOps.mirror(sketch)], modality="sketch")
    assert np.abs(drawn[0] - drawn[1]).max() > 1e-3


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_mirror_image_is_found_alike_when_the_bundle_flips(
    make_settings: Callable[..., Settings], flip_bundle_dir: Path, backend: str
) -> None:
    settings = make_settings(MODEL_DIR=flip_bundle_dir, BACKEND=backend)
    keys = create_keys(settings)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        model = client.get("/api/v1/model", headers=keys.investigator).json()
        assert model["inference"]["backend"] == backend

        person = person_image(0)
        ids = {}
        for name, image in (
            ("person", person),
            ("mirrored", ImageOps.mirror(person)),
            *((f"other{s}", person_image(s)) for s in range(1, 6)),
        ):
            r: Any = upload(client, keys.operator, _png(image), camera_id="c1")
            assert r.status_code == 201, r.text
            ids[name] = r.json()["id"]

        sketch = load_image(sketch_png(1))

        def search(image: Image.Image) -> dict[int, float]:
            r = client.post(
                "/api/v1/search",
                files={"sketch": ("s.png", _png(image), "image/png")},
                data={"top_k": "7", "view": "sketch"},
                headers=keys.investigator,
            )
            assert r.status_code == 200, r.text
            return {h["gallery_id"]: h["score"] for h in r.json()["results"]}

        drawn, mirrored = search(sketch), search(ImageOps.mirror(sketch))
        assert len(drawn) == 7
        assert drawn[ids["person"]] == pytest.approx(drawn[ids["mirrored"]], abs=1e-5)
        assert list(mirrored) == list(drawn)
        np.testing.assert_allclose(list(mirrored.values()), list(drawn.values()), atol=1e-5)
