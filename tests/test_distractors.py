"""Distractors in the protocol: strangers' crops added to every split's gallery, figures at
each gallery size, which distractors the pre-training saw, and the embedding cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import app.ml.evaluation.distractors as distractors_mod
from app.cli.main import main
from app.ml.bundle.store import load_bundle
from app.ml.data.pku import load_pku_sketch
from app.ml.data.synth import generate_synthetic
from app.ml.evaluation.distractors import (
    DISTRACTOR_PID_BASE,
    DistractorOptions,
    load_distractors,
    score_by_gallery_size,
)
from app.ml.evaluation.testset import embed_test_set
from app.ml.retrieval.distances import distances
from app.ml.retrieval.metrics import ranking_result


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def strangers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Market-style folder of 10 other synthetic people (pids 1..10, two cameras)."""
    root = tmp_path_factory.mktemp("strangers")
    pku = generate_synthetic(root / "pku", 10, seed=7)
    folder = root / "market" / "bounding_box_train"
    folder.mkdir(parents=True)
    for i, s in enumerate(pku.photos):
        shutil.copy(s.path, folder / f"{s.pid:04d}_c{s.camid}s1_{i:06d}_00.jpg")
    return root / "market"


@pytest.fixture(scope="module")
def plain_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain folder (nested) of 6 crops of yet other people."""
    root = tmp_path_factory.mktemp("plain")
    pku = generate_synthetic(root / "pku", 3, seed=9)
    (root / "crops" / "cam9").mkdir(parents=True)
    for i, s in enumerate(pku.photos):
        shutil.copy(s.path, root / "crops" / "cam9" / f"crop{i}.png")
    return root / "crops"


def _evaluate(synth: Path, bundle: Path, out: Path, *extra: object) -> dict[str, Any]:
    argv = ["evaluate", "--data-root", synth, "--model", bundle, "--test-ids", "all"]
    assert main([str(a) for a in [*argv, *extra, "--json", out]]) == 0
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_figures_at_each_gallery_size_are_those_of_the_grown_gallery(
    synth_root: Path, random_bundle_dir: Path, strangers: Path, plain_folder: Path, tmp_path: Path
) -> None:
    report = _evaluate(
        synth_root,
        random_bundle_dir,
        tmp_path / "e.json",
        "--view",
        "sketch",
        "--distractors",
        strangers,
        "--distractors",
        plain_folder,
        "--distractor-sizes",
        "0,7,1000",
        "--distractor-cache",
        tmp_path / "cache",
    )
    d = report["distractors"]
    assert d["available"] == d["used"] == 20 + 6, "every crop of both folders, no more"
    assert list(d["by_size"]) == ["0", "7", "26"], "sizes beyond what exists are capped"
    split = report["splits"][0]["gallery_sizes"]["by_size"]
    assert [split[s]["n_gallery"] for s in ("0", "7", "26")] == [24, 31, 50]
    # Size 0 is the plain evaluation; each size is recomputed here from the embeddings.
    assert split["0"]["plain"]["rank1"] == report["rank1"]
    assert split["0"]["plain"]["mAP"] == pytest.approx(report["mAP"])
    bundle = load_bundle(random_bundle_dir)
    e = embed_test_set(
        bundle.embedder, None, load_pku_sketch(synth_root), list(range(1, 13)), view="sketch"
    )
    dset = load_distractors([strangers, plain_folder], bundle)
    extra = bundle.embedder.embed(
        [distractors_mod.load_image(x.path) for x in dset.items[:7]], modality="photo"
    )
    g = np.concatenate([e.gallery, extra])
    g_pids = np.concatenate([e.g_pids, DISTRACTOR_PID_BASE + np.arange(7)])
    g_cams = np.concatenate([e.g_camids, np.zeros(7, dtype=np.int64)])
    want = ranking_result(distances(e.query, g), e.q_pids, g_pids, e.q_camids, g_cams, 100)
    assert split["7"]["plain"]["mAP"] == pytest.approx(want.mAP)
    assert split["7"]["plain"]["rank1"] == pytest.approx(want.rank1)
    # Strangers can only push the right person down.
    maps = [split[s]["plain"]["mAP"] for s in ("0", "7", "26")]
    assert maps == sorted(maps, reverse=True)
    assert maps[-1] < maps[0], "26 strangers among 24 photos cost something"


def test_distractor_embeddings_are_cached_per_bundle(
    synth_root: Path,
    random_bundle_dir: Path,
    strangers: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = ["--view", "sketch", "--distractors", strangers, "--distractor-cache", tmp_path / "c"]
    first = _evaluate(synth_root, random_bundle_dir, tmp_path / "a.json", *args)
    assert len(list((tmp_path / "c").glob("units-*.npy"))) == 1
    loaded: list[Path] = []
    real = distractors_mod.load_image
    monkeypatch.setattr(distractors_mod, "load_image", lambda p: loaded.append(p) or real(p))
    second = _evaluate(synth_root, random_bundle_dir, tmp_path / "b.json", *args)
    assert loaded == [], "the second run embeds no distractor again"
    assert second["distractors"]["by_size"] == first["distractors"]["by_size"]
    # Another bundle (other weights) does not read this cache.
    other = tmp_path / "other"
    shutil.copytree(random_bundle_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    state = torch.load(other / "resnet8.pt", weights_only=True)
    state["fc.bias"] = state["fc.bias"] + 1.0
    torch.save(state, other / "resnet8.pt")
    from app.ml.bundle.store import _sha256

    manifest["members"][0]["sha256"] = _sha256(other / "resnet8.pt")
    (other / "manifest.json").write_text(json.dumps(manifest))
    _evaluate(synth_root, other, tmp_path / "c.json", *args)
    assert len(loaded) == 20
    assert len(list((tmp_path / "c").glob("units-*.npy"))) == 2


def _pretrained_on(bundle_dir: Path, out: Path, market: Path, held: list[int]) -> Path:
    """A copy of ``bundle_dir`` whose member records pre-training on ``market`` with
    ``held`` identities held out (what `train reid --pretrained` records)."""
    shutil.copytree(bundle_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["members"][0]["training"]["pretrain"] = {
        "data": {
            "folders": [{"path": str(market), "identities": 10, "images": 20}],
            "holdout": {"folder": str(market), "identities": held, "images": 2 * len(held)},
        }
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_distractors_the_pretraining_saw_are_told_apart(
    synth_root: Path, random_bundle_dir: Path, strangers: Path, plain_folder: Path, tmp_path: Path
) -> None:
    bundle = load_bundle(_pretrained_on(random_bundle_dir, tmp_path / "b", strangers, [9, 10]))
    dset = load_distractors([strangers, plain_folder], bundle)
    seen = {(x.folder, x.pid) for x, s in zip(dset.items, dset.seen, strict=True) if s}
    assert seen == {(strangers, pid) for pid in range(1, 9)}, "pids 1-8 trained, 9-10 held out"
    assert dset.describe(len(dset))["seen_by_pretraining"] == 16
    unseen = load_distractors([strangers, plain_folder], bundle, unseen_only=True)
    assert len(unseen) == 4 + 6 and not unseen.seen.any()
    assert {x.pid for x in unseen.items if x.folder == strangers} == {9, 10}
    report = _evaluate(
        synth_root,
        tmp_path / "b",
        tmp_path / "e.json",
        "--view",
        "sketch",
        "--distractors",
        strangers,
        "--distractors-unseen",
        "--distractor-cache",
        tmp_path / "c",
    )
    assert report["distractors"]["used"] == 4
    assert report["distractors"]["seen_by_pretraining"] == 0


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_reranking_with_distractors_is_the_services_over_the_top_candidates(
    random_bundle_dir: Path, strangers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hand-made embeddings (12 people, 2 photos each, 20 strangers) where re-ranking the
    top 10 changes the figures; every query's ranking is rebuilt here as the service ranks."""
    from app.ml.evaluation.testset import Embedded
    from app.ml.retrieval.rerank import rerank_candidates

    rng = np.random.default_rng(0)
    centres = _unit(rng.normal(size=(12, 8)))
    e = Embedded(
        query=_unit(centres + 0.5 * rng.normal(size=(12, 8))),
        gallery=_unit(np.repeat(centres, 2, axis=0) + 0.5 * rng.normal(size=(24, 8))),
        q_pids=np.arange(12),
        g_pids=np.repeat(np.arange(12), 2),
        q_camids=np.full(12, -1),
        g_camids=np.tile([1, 2], 12),
        translated=False,
    )
    strange = _unit(rng.normal(size=(20, 8)))
    monkeypatch.setattr(distractors_mod, "embed_distractors", lambda *a, **k: strange)
    opts = DistractorOptions(folders=(strangers,), sizes=(20,), rerank_candidates=10)
    row = score_by_gallery_size(load_bundle(random_bundle_dir), e, opts, rerank=(3, 2, 0.3))[
        "by_size"
    ]["20"]
    g = np.concatenate([e.gallery, strange])
    g_pids = np.concatenate([e.g_pids, DISTRACTOR_PID_BASE + np.arange(20)])
    g_cams = np.concatenate([e.g_camids, np.zeros(20, dtype=np.int64)])
    ranks = np.zeros((12, len(g)))
    for qi in range(12):
        order = np.argsort(distances(e.query[qi : qi + 1], g)[0], kind="stable")
        rr = rerank_candidates(e.query[qi], g[order[:10]], k1=3, k2=2, lambda_value=0.3)
        order[:10] = order[:10][np.argsort(rr, kind="stable")]
        ranks[qi, order] = np.arange(len(g))
    want = ranking_result(ranks, e.q_pids, g_pids, e.q_camids, g_cams, 100)
    assert row["rerank"]["mAP"] == pytest.approx(want.mAP)
    assert row["rerank"]["cmc"] == pytest.approx(list(want.cmc))
    assert row["rerank"]["mAP"] != pytest.approx(row["plain"]["mAP"]), "re-ranking mattered"


def test_distractor_options_without_folders_are_refused(
    synth_root: Path, random_bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--data-root", synth_root, "--model", random_bundle_dir]
    argv += ["--test-ids", "all", "--distractors-max", "5", "--json", tmp_path / "x.json"]
    assert main([str(a) for a in argv]) == 2
    assert "--distractors-max needs --distractors DIR" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    argv = ["evaluate", "--data-root", synth_root, "--model", random_bundle_dir, "--test-ids"]
    argv += ["all", "--distractors", tmp_path, "--json", tmp_path / "y.json"]
    assert main([str(a) for a in argv]) == 2
    assert "no images in distractor folder" in capsys.readouterr().err


def test_crossval_reports_each_variant_at_each_gallery_size(
    synth_root: Path, strangers: Path, tmp_path: Path
) -> None:
    argv = ["crossval", "--data-root", synth_root, "--splits", "1", "--test-size", "4"]
    argv += ["--preset", "smoke", "--arch", "resnet8", "--epochs", "1", "--no-progress"]
    argv += ["--workdir", tmp_path / "w", "--distractors", strangers]
    argv += ["--distractor-sizes", "0,10", "--json", tmp_path / "cv.json"]
    assert main([str(a) for a in argv]) == 0
    report = json.loads((tmp_path / "cv.json").read_text())
    variants = report["variants"]
    for name in ("plain@0", "plain@10", "rerank@0", "rerank@10"):
        assert name in variants and "rank100" in variants[name], name
    assert variants["plain@10"]["splits"][0]["n_gallery"] == 8 + 10
    assert variants["plain@0"]["rank1"] == variants["plain"]["rank1"]
    assert report["distractors"]["sizes"] == [0, 10]
    assert list((tmp_path / "w" / "distractor-cache").glob("units-*.npy"))
