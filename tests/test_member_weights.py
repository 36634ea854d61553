"""Members weighted unequally (manifest ``member_weights``, issue 22): the ensemble's cosine is
the share-weighted mean of its members' cosines. The weights travel with the bundle
(``model annotate --member-weights``), reach both backends and change the embedding key;
equal weights embed, and key, as a bundle without the field."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from two_members import SIZE, SPEC, picture, save_two, two_members

import app.ml.evaluation.distractors as distractors_mod
from app.cli.main import main
from app.ml.bundle.onnx_export import export_onnx
from app.ml.bundle.onnx_parity import with_onnx
from app.ml.bundle.store import combine_bundles, load_bundle, save_bundle
from app.ml.evaluation.distractors import DistractorOptions, bundle_key, distractors_for
from app.ml.infer.embedder import l2_normalize
from app.ml.infer.torch_embedder import Embedder
from app.services.context import embedding_key

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def members() -> list[torch.nn.Module]:
    return two_members()


def test_the_cosine_is_the_weighted_mean_of_the_member_cosines(
    members: list[torch.nn.Module],
) -> None:
    images = [picture(i) for i in range(6)]
    alone = [Embedder([m], SIZE).embed(images) for m in members]
    cos = [a @ a.T for a in alone]
    for weights in ([0.6, 0.4], [3.0, 1.0], [0.2, 0.8]):
        share = weights[0] / sum(weights)
        e = Embedder(members, SIZE, member_weights=weights).embed(images)
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(e @ e.T, share * cos[0] + (1 - share) * cos[1], atol=1e-5)
    # Equal weights are the shipped mean of cosines, and unequal ones move the scores.
    equal = Embedder(members, SIZE, member_weights=[1.0, 1.0]).embed(images)
    np.testing.assert_allclose(equal, Embedder(members, SIZE).embed(images), atol=1e-6)
    tilted = Embedder(members, SIZE, member_weights=[0.9, 0.1]).embed(images)
    assert np.abs(tilted @ tilted.T - equal @ equal.T).max() > 1e-3
    with pytest.raises(ValueError, match="positive"):
        Embedder(members, SIZE, member_weights=[1.0, 0.0])
    with pytest.raises(ValueError, match="2 member weights for 1 members"):
        Embedder(members[:1], SIZE, member_weights=[0.5, 0.5]).embed(images[:1])


def _bundle(folder: Path, members: list[torch.nn.Module]) -> Path:
    return save_two(folder, members, "weights-demo")


def test_annotate_sets_the_weights_for_both_backends_and_the_keys(
    members: list[torch.nn.Module], tmp_path: Path
) -> None:
    folder = _bundle(tmp_path / "b", members)
    before = load_bundle(folder)
    key, dkey = embedding_key(before.manifest), bundle_key(before)
    images = [picture(20 + i) for i in range(4)]
    plain = before.embedder.embed(images)

    assert main(["model", "annotate", str(folder), "--member-weights", "0.6,0.4"]) == 0
    after = load_bundle(folder)
    assert after.manifest.member_weights == [0.6, 0.4]
    assert after.manifest.shares() == pytest.approx([0.6, 0.4])
    assert embedding_key(after.manifest) != key and bundle_key(after) != dkey
    weighted = after.embedder.embed(images)
    np.testing.assert_allclose(
        weighted,
        Embedder(members, SIZE, member_weights=[0.6, 0.4]).embed(images),
        atol=1e-6,
    )
    assert np.abs(weighted - plain).max() > 1e-3

    onnx = with_onnx(after, (export_onnx(after, tmp_path / "onnx"), tmp_path / "onnx")[1])
    assert onnx.embedder.backend == "onnx"
    np.testing.assert_allclose(onnx.embedder.embed(images), weighted, atol=1e-4)

    # Equal weights: the vectors and the key of a bundle without the field.
    assert main(["model", "annotate", str(folder), "--member-weights", "1,1"]) == 0
    assert embedding_key(load_bundle(folder).manifest) == key
    assert main(["model", "annotate", str(folder), "--member-weights", "equal"]) == 0
    assert load_bundle(folder).manifest.member_weights is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.6", "1 values for 2 members"),
        ("0.6,0.3,0.1", "3 values for 2 members"),
        ("0.6,-0.4", "must all be positive"),
        ("0.6,nan", "must all be positive"),
        ("heavy,light", "comma-separated numbers"),
    ],
)
def test_annotate_refuses_bad_weights_and_leaves_the_manifest(
    members: list[torch.nn.Module],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    message: str,
) -> None:
    folder = _bundle(tmp_path / "b", members)
    before = (folder / "manifest.json").read_bytes()
    assert main(["model", "annotate", str(folder), "--member-weights", text]) == 2
    assert message in capsys.readouterr().err
    assert (folder / "manifest.json").read_bytes() == before


def test_a_combined_ensemble_starts_with_equal_weights(
    members: list[torch.nn.Module], tmp_path: Path
) -> None:
    folder = _bundle(tmp_path / "b", members)
    assert main(["model", "annotate", str(folder), "--member-weights", "0.7,0.3"]) == 0
    single = tmp_path / "single"
    save_bundle(single, name="one", version="1", members=[("x", SPEC, members[0], {})])
    combined = combine_bundles([load_bundle(folder), load_bundle(single)])
    assert combined.manifest.member_weights is None and len(combined.members) == 3
    images = [picture(40 + i) for i in range(2)]
    e = combined.embedder.embed(images)
    parts = [l2_normalize(e[:, i * 16 : (i + 1) * 16]) for i in range(3)]
    np.testing.assert_allclose(e, np.concatenate(parts, 1) / np.sqrt(3), atol=1e-5)


def test_bundles_that_differ_only_in_weights_share_one_distractor_cache(
    members: list[torch.nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A weight sweep on the protocol embeds the strangers once: the cache holds equal-share
    vectors and each bundle gets exactly its own weighting back."""
    crops = tmp_path / "crops"
    crops.mkdir()
    for i in range(5):
        picture(60 + i).save(crops / f"c{i}.png")
    opts = DistractorOptions(folders=(crops,), cache_dir=tmp_path / "cache")
    folder = _bundle(tmp_path / "b", members)
    _, equal = distractors_for(load_bundle(folder), opts)
    assert main(["model", "annotate", str(folder), "--member-weights", "0.7,0.3"]) == 0
    weighted_bundle = load_bundle(folder)
    loaded: list[Path] = []
    real = distractors_mod.load_image
    monkeypatch.setattr(distractors_mod, "load_image", lambda p: loaded.append(p) or real(p))
    dset, weighted = distractors_for(weighted_bundle, opts)
    assert loaded == [], "the weighted bundle reads the equal-weight bundle's cache"
    assert len(list((tmp_path / "cache").glob("units-*.npy"))) == 1
    direct = weighted_bundle.embedder.embed([real(d.path) for d in dset.items], modality="photo")
    np.testing.assert_allclose(weighted, direct, atol=1e-5)
    assert np.abs(weighted - equal).max() > 1e-3
    # Written by a weighted bundle, read back by the equal one: the same vectors again.
    shutil.rmtree(tmp_path / "cache")
    distractors_for(weighted_bundle, opts)
    assert main(["model", "annotate", str(folder), "--member-weights", "equal"]) == 0
    _, again = distractors_for(load_bundle(folder), opts)
    np.testing.assert_allclose(again, equal, atol=1e-5)
