"""Flip TTA decided for photos apart from sketches (manifest ``photo_tta_flip``, issue 21):
a gallery crop without its mirror image costs half a pass, while query sketches keep theirs.
The rule travels with the bundle (``model annotate --photo-flip``), reaches both backends and
changes the embedding key, and bundles without the field keep the key they had."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from two_members import SIZE, picture, save_two, two_members

from app.cli.main import main
from app.ml.bundle.onnx_export import export_onnx
from app.ml.bundle.onnx_parity import with_onnx
from app.ml.bundle.store import load_bundle
from app.ml.evaluation.distractors import bundle_key
from app.ml.infer.embedder import Modality
from app.ml.infer.torch_embedder import Embedder
from app.services.context import embedding_key

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def members() -> list[torch.nn.Module]:
    return two_members()


def test_photos_skip_the_mirror_image_and_sketches_keep_it(members: list[torch.nn.Module]) -> None:
    split = Embedder(members, SIZE, tta_flip=True, photo_flip=False)
    flipped = Embedder(members, SIZE, tta_flip=True)
    plain = Embedder(members, SIZE, tta_flip=False)
    images = [picture(i) for i in range(4)]
    kinds: list[Modality] = ["photo", "sketch", "sketch", "photo"]
    mixed = split.embed(images, modality=kinds)
    for image, kind, row in zip(images, kinds, mixed, strict=True):
        want = (plain if kind == "photo" else flipped).embed([image], modality=kind)[0]
        np.testing.assert_allclose(row, want, atol=1e-5)
    # Meaningful: with the mirror image a photo embeds otherwise.
    with_mirror = flipped.embed(images[:1], modality="photo")[0]
    assert np.abs(mixed[0] - with_mirror).max() > 1e-3
    # A pass holds each image once and the mirror images of the sketches only.
    x = split.network_input(split.to_uint8(images, kinds), split.flips(kinds))
    assert x.shape[0] == 6


def _bundle(folder: Path, members: list[torch.nn.Module]) -> Path:
    return save_two(folder, members, "flip-demo")


def test_annotate_sets_the_rule_for_both_backends_and_the_keys(
    members: list[torch.nn.Module], tmp_path: Path
) -> None:
    folder = _bundle(tmp_path / "b", members)
    before = load_bundle(folder)
    assert before.manifest.photo_tta_flip is None and before.embedder.photo_flip is True
    key, dkey = embedding_key(before.manifest), bundle_key(before)

    assert main(["model", "annotate", str(folder), "--photo-flip", "off"]) == 0
    after = load_bundle(folder)
    assert after.manifest.photo_tta_flip is False and after.embedder.photo_flip is False
    assert after.embedder.tta_flip is True
    assert embedding_key(after.manifest) != key and bundle_key(after) != dkey

    onnx = with_onnx(after, (export_onnx(after, tmp_path / "onnx"), tmp_path / "onnx")[1])
    assert onnx.embedder.backend == "onnx" and onnx.embedder.photo_flip is False
    images = [picture(10 + i) for i in range(3)]
    kinds: list[Modality] = ["photo", "sketch", "photo"]
    np.testing.assert_allclose(
        onnx.embedder.embed(images, modality=kinds),
        after.embedder.embed(images, modality=kinds),
        atol=1e-4,
    )


def test_a_bundle_without_the_field_keeps_its_embedding_key(
    members: list[torch.nn.Module], tmp_path: Path
) -> None:
    """Upgrading must not re-embed every gallery: the key of a bundle that does not set
    photo_tta_flip is computed as it was before the field existed."""
    m = load_bundle(_bundle(tmp_path / "b", members)).manifest
    shaping = {
        "members": [e.sha256 for e in m.members],
        "input_size": list(m.input_size),
        "mean": list(m.mean),
        "std": list(m.std),
        "tta_flip": m.tta_flip,
        "combine": m.combine,
    }
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]
    assert embedding_key(m) == f"flip-demo:1:{digest}"
