"""Modality centering (manifest ``centering``, issues 22 and 26): each member's embedding less
the mean of its kind (photo or sketch) over the training identities, made by ``sketchreid
model center``, applied by both backends to every image by its kind, part of the embedding
key; refused without the training identities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from two_members import SIZE, SPEC, picture, save_two, two_members

from app.cli.main import main
from app.ml.bundle.onnx_export import export_onnx
from app.ml.bundle.onnx_parity import with_onnx
from app.ml.bundle.store import load_bundle, resave, save_bundle
from app.ml.data.pku import load_pku_sketch
from app.ml.evaluation.centering import member_units
from app.ml.evaluation.distractors import bundle_key
from app.ml.images import load_image
from app.ml.infer.embedder import Modality, l2_normalize
from app.ml.infer.torch_embedder import Embedder
from app.services.context import embedding_key

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def members() -> list[torch.nn.Module]:
    return two_members()


def test_each_member_loses_the_mean_of_the_images_kind(members: list[torch.nn.Module]) -> None:
    rng = np.random.default_rng(1)
    photo_mean, sketch_mean = rng.normal(0, 0.2, (2, 32)).astype(np.float32)
    centered = Embedder(members, SIZE, centering=(photo_mean, sketch_mean))
    plain = Embedder(members, SIZE)
    images = [picture(i) for i in range(4)]
    kinds: list[Modality] = ["photo", "sketch", "photo", "sketch"]
    have = centered.embed(images, modality=kinds)
    units = plain.embed_units(images, modality=kinds)
    for row, unit, kind in zip(have, units, kinds, strict=True):
        mean = photo_mean if kind == "photo" else sketch_mean
        want = np.concatenate(
            [l2_normalize((unit[s] - mean[s])[None])[0] for s in (slice(0, 16), slice(16, 32))]
        ) / np.sqrt(2)
        np.testing.assert_allclose(row, want, atol=1e-5)
    # A mixed batch embeds each image as it would alone, by its own kind.
    alone = [centered.embed([im], modality=k)[0] for im, k in zip(images, kinds, strict=True)]
    np.testing.assert_allclose(have, np.stack(alone), atol=1e-5)
    assert np.abs(have - plain.embed(images, modality=kinds)).max() > 1e-2


def _trained_bundle(folder: Path, members: list[torch.nn.Module]) -> Path:
    return save_two(folder, members, "center-demo", training={"train_pids": list(range(1, 9))})


def test_model_center_stores_the_training_means_for_both_backends_and_the_keys(
    members: list[torch.nn.Module], synth_root: Path, tmp_path: Path
) -> None:
    folder = _trained_bundle(tmp_path / "b", members)
    before = load_bundle(folder)
    key, dkey = embedding_key(before.manifest), bundle_key(before)
    assert main(["model", "center", str(folder), "--data-root", str(synth_root)]) == 0
    after = load_bundle(folder)
    c = after.manifest.centering
    assert c is not None and (c.identities, c.photos, c.sketches) == (8, 16, 8)
    # The means are those of the members' unit embeddings of the training people only.
    train = load_pku_sketch(synth_root).subset(range(1, 9))
    photos = member_units(before.embedder, [s.path for s in train.photos], "photo")
    sketches = member_units(before.embedder, [s.path for s in train.sketches], "sketch")
    np.testing.assert_allclose(c.photo, photos.mean(0), atol=2e-6)
    np.testing.assert_allclose(c.sketch, sketches.mean(0), atol=2e-6)
    assert np.abs(photos.mean(0) - sketches.mean(0)).max() > 1e-2, "the kinds differ"
    assert embedding_key(after.manifest) != key and bundle_key(after) != dkey

    images = [load_image(s.path) for s in train.photos[:2] + train.sketches[:2]]
    kinds: list[Modality] = ["photo", "photo", "sketch", "sketch"]
    want = Embedder(members, SIZE, centering=(c.photo, c.sketch)).embed(images, modality=kinds)
    np.testing.assert_allclose(after.embedder.embed(images, modality=kinds), want, atol=1e-6)
    onnx = with_onnx(after, (export_onnx(after, tmp_path / "onnx"), tmp_path / "onnx")[1])
    np.testing.assert_allclose(onnx.embedder.embed(images, modality=kinds), want, atol=1e-4)
    # Saved again (e.g. with a new translator), the bundle keeps its means.
    resave(after, tmp_path / "copy")
    assert load_bundle(tmp_path / "copy").manifest.centering == c

    assert main(["model", "center", str(folder), "--off"]) == 0
    assert load_bundle(folder).manifest.centering is None
    assert embedding_key(load_bundle(folder).manifest) == key


def test_model_center_refuses_a_bundle_without_its_training_identities(
    members: list[torch.nn.Module],
    synth_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "b"
    save_bundle(folder, name="x", version="1", members=[("m", SPEC, members[0], {})])
    before = (folder / "manifest.json").read_bytes()
    assert main(["model", "center", str(folder), "--data-root", str(synth_root)]) == 2
    assert "training.train_pids" in capsys.readouterr().err
    assert main(["model", "center", str(folder)]) == 2
    assert "--data-root" in capsys.readouterr().err
    assert (folder / "manifest.json").read_bytes() == before


def test_a_manifest_with_means_of_the_wrong_size_is_refused(
    members: list[torch.nn.Module], synth_root: Path, tmp_path: Path
) -> None:
    from app.errors import BundleError

    folder = _trained_bundle(tmp_path / "b", members)
    assert main(["model", "center", str(folder), "--data-root", str(synth_root)]) == 0
    data = json.loads((folder / "manifest.json").read_text())
    data["centering"]["photo"] = data["centering"]["photo"][:-1]
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="centering"):
        load_bundle(folder)


def test_a_centred_bundle_reads_the_plain_bundles_distractor_units(
    members: list[torch.nn.Module],
    synth_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import app.ml.evaluation.distractors as distractors_mod
    from app.ml.evaluation.distractors import DistractorOptions, distractors_for

    crops = tmp_path / "crops"
    crops.mkdir()
    for i in range(5):
        picture(70 + i).save(crops / f"c{i}.png")
    opts = DistractorOptions(folders=(crops,), cache_dir=tmp_path / "cache")
    folder = _trained_bundle(tmp_path / "b", members)
    _, plain = distractors_for(load_bundle(folder), opts)
    assert main(["model", "center", str(folder), "--data-root", str(synth_root)]) == 0
    centred = load_bundle(folder)
    loaded: list[Path] = []
    real = distractors_mod.load_image
    monkeypatch.setattr(distractors_mod, "load_image", lambda p: loaded.append(p) or real(p))
    dset, vectors = distractors_for(centred, opts)
    assert loaded == [] and len(list((tmp_path / "cache").glob("units-*.npy"))) == 1
    direct = centred.embedder.embed([real(d.path) for d in dset.items], modality="photo")
    np.testing.assert_allclose(vectors, direct, atol=1e-5)
    assert np.abs(vectors - plain).max() > 1e-2
