"""The paths every results-table row comes from: app.ml.evaluation.evaluate (translate or not,
re-rank or not), `sketchreid evaluate` with its re-ranking options and
`sketchreid crossval --per-member`.

Each test checks the concrete effect, not only the flags in the report: translated queries are
the embeddings of the translator's output, re-ranked figures are those of
``k_reciprocal_rerank``'s matrix with the parameters given, per-member figures are those of the
member alone. The evaluation tests use a random-weight bundle (one resnet8 member and a
generator with PyTorch's default initialisation, whose output varies with its input) on the
session's 12-identity synthetic set; the crossval tests train smoke-preset members for one
epoch.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import app.ml.evaluation.evaluate as evaluate_mod
from app.cli.main import main
from app.ml.bundle.store import Bundle, combine_bundles, load_bundle
from app.ml.data.pku import PKUSketchDataset, load_pku_sketch
from app.ml.data.splits import random_splits
from app.ml.evaluation.evaluate import Embedded, RerankParams, distances, embed_test_set, score
from app.ml.evaluation.testset import fused_queries
from app.ml.images import load_image
from app.ml.infer.embedder import fuse_views
from app.ml.infer.torch_embedder import Embedder
from app.ml.retrieval.metrics import ranking_result
from app.ml.retrieval.rerank import k_reciprocal_rerank

SIZE = (32, 16)
FIGURES = ("rank1", "rank5", "rank10", "mAP", "cmc", "n_queries", "n_gallery")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset(synth_root: Path) -> PKUSketchDataset:
    return load_pku_sketch(synth_root)


@pytest.fixture(scope="module")
def bundle_dir(random_bundle_dir: Path) -> Path:
    """The session's random-weight bundle with a translator (tests/conftest.py)."""
    return random_bundle_dir


@pytest.fixture(scope="module")
def bundle(bundle_dir: Path) -> Bundle:
    return load_bundle(bundle_dir)


def _figures(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in FIGURES}


def _expected(dist: np.ndarray, e: Embedded) -> dict[str, Any]:
    """The figures of ``dist`` for the identities and cameras of ``e``."""
    return ranking_result(dist, e.q_pids, e.g_pids, e.q_camids, e.g_camids).to_dict()


def _reranked(q: np.ndarray, g: np.ndarray, params: RerankParams) -> np.ndarray:
    return k_reciprocal_rerank(
        distances(q, g),
        distances(q, q),
        distances(g, g),
        k1=params.k1,
        k2=params.k2,
        lambda_value=params.lambda_value,
    )


# ------------------------------------------------------------------ app.ml.evaluation.evaluate


def test_translated_queries_are_the_embedded_translations(
    bundle: Bundle, dataset: PKUSketchDataset
) -> None:
    assert bundle.translator is not None
    sketches = [load_image(s.path) for s in dataset.sketches]
    want_translated = bundle.embedder.embed(
        bundle.translator.translate_batch(sketches), modality="photo"
    )
    want_plain = bundle.embedder.embed(sketches, modality="sketch")
    assert np.abs(want_translated - want_plain).max() > 0.05, "the two paths must differ here"

    translated = embed_test_set(bundle.embedder, bundle.translator, dataset, dataset.pids)
    plain = embed_test_set(
        bundle.embedder, bundle.translator, dataset, dataset.pids, translate=False
    )
    no_translator = embed_test_set(bundle.embedder, None, dataset, dataset.pids)

    assert translated.translated is True
    np.testing.assert_allclose(translated.query, want_translated, rtol=0, atol=1e-6)
    for untranslated in (plain, no_translator):
        assert untranslated.translated is False
        np.testing.assert_allclose(untranslated.query, want_plain, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(untranslated.gallery, translated.gallery)
    np.testing.assert_array_equal(translated.q_pids, [s.pid for s in dataset.sketches])
    np.testing.assert_array_equal(translated.g_pids, [s.pid for s in dataset.photos])


def test_fused_queries_are_the_sketch_and_translation_embeddings_fused(
    bundle: Bundle, dataset: PKUSketchDataset
) -> None:
    plain = embed_test_set(bundle.embedder, None, dataset, dataset.pids)
    translated = embed_test_set(bundle.embedder, bundle.translator, dataset, dataset.pids)
    fused = fused_queries(plain, translated)

    both = plain.query + translated.query
    np.testing.assert_allclose(
        fused.query, both / np.linalg.norm(both, axis=1, keepdims=True), rtol=0, atol=1e-6
    )
    for one in (plain, translated):
        assert np.abs(fused.query - one.query).max() > 0.01, "fused is neither view alone"
    np.testing.assert_array_equal(fused.gallery, translated.gallery)
    assert fused.fused and fused.translated and score(fused)["fused"] is True
    assert score(plain)["fused"] is False
    with pytest.raises(ValueError, match="untranslated and a translated"):
        fused_queries(translated, plain)


def _clustered(seed: int = 0) -> Embedded:
    """8 identities, a query and 3 gallery views each, around a random centre per identity.

    With this seed the plain mAP is 0.858; k-reciprocal re-ranking lifts it to 0.938 with
    k1=3 and to 0.891 with k1=6 (k2=2, lambda 0.3)."""
    rng = np.random.default_rng(seed)
    n_ids, views, dim = 8, 3, 16
    centres = rng.normal(size=(n_ids, dim))
    g = np.repeat(centres, views, 0) + 0.9 * rng.normal(size=(n_ids * views, dim))
    q = centres + 0.9 * rng.normal(size=(n_ids, dim))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    pids = np.arange(n_ids)
    return Embedded(
        query=q.astype(np.float32),
        gallery=g.astype(np.float32),
        q_pids=pids,
        g_pids=np.repeat(pids, views),
        q_camids=np.full(n_ids, -1),
        g_camids=np.ones(n_ids * views, dtype=np.int64),
        translated=False,
    )


def test_score_ranks_by_the_rerank_output_with_its_parameters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    e = _clustered()
    ranked: list[np.ndarray] = []  # every distance matrix score() ranks by

    def spy(distmat: np.ndarray, *args: Any) -> Any:
        ranked.append(np.array(distmat, copy=True))
        return ranking_result(distmat, *args)

    monkeypatch.setattr(evaluate_mod, "ranking_result", spy)
    k3, k6 = RerankParams(k1=3, k2=2, lambda_value=0.3), RerankParams(k1=6, k2=2, lambda_value=0.3)
    plain, reranked, other = score(e), score(e, rerank=k3), score(e, rerank=k6)

    assert len(ranked) == 3
    np.testing.assert_array_equal(ranked[0], distances(e.query, e.gallery))
    want_k3, want_k6 = _reranked(e.query, e.gallery, k3), _reranked(e.query, e.gallery, k6)
    np.testing.assert_array_equal(ranked[1], want_k3)
    np.testing.assert_array_equal(ranked[2], want_k6)
    assert not np.array_equal(want_k3, want_k6)

    assert _figures(plain) == _expected(distances(e.query, e.gallery), e)
    assert _figures(reranked) == _expected(want_k3, e)
    assert _figures(other) == _expected(want_k6, e)
    assert plain["reranked"] is False and reranked["reranked"] is other["reranked"] is True
    # On this data the three rankings are different rankings, so the report shows which one ran.
    assert plain["mAP"] == pytest.approx(0.8581, abs=1e-4)
    assert reranked["mAP"] == pytest.approx(0.9380, abs=1e-4)
    assert other["mAP"] == pytest.approx(0.8911, abs=1e-4)


# --------------------------------------------------------------------------- sketchreid evaluate


def _evaluate(synth_root: Path, bundle_dir: Path, out: Path, *extra: str) -> dict[str, Any]:
    argv = ["evaluate", "--data-root", str(synth_root), "--model", str(bundle_dir)]
    assert main([*argv, "--test-ids", "all", *extra, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert isinstance(report, dict)
    return report


def _both_views(
    bundle: Bundle, dataset: PKUSketchDataset
) -> tuple[Embedded, np.ndarray, np.ndarray]:
    """The test set's ids and gallery, and its sketches embedded as drawn and translated,
    computed here without app.ml.infer.query_views."""
    assert bundle.translator is not None
    sketches = [load_image(s.path) for s in dataset.sketches]
    e = embed_test_set(bundle.embedder, None, dataset, dataset.pids)
    q_sketch = bundle.embedder.embed(sketches, modality="sketch")
    q_photo = bundle.embedder.embed(bundle.translator.translate_batch(sketches), modality="photo")
    return e, q_sketch, q_photo


def test_evaluate_cli_figures_are_those_of_the_translated_sketches(
    bundle: Bundle,
    bundle_dir: Path,
    dataset: PKUSketchDataset,
    synth_root: Path,
    tmp_path: Path,
) -> None:
    e, q_plain, q_translated = _both_views(bundle, dataset)
    want_translated = _expected(distances(q_translated, e.gallery), e)
    want_plain = _expected(distances(q_plain, e.gallery), e)
    assert want_translated != want_plain, "the two paths must give different figures here"

    translated = _evaluate(synth_root, bundle_dir, tmp_path / "t.json")
    plain = _evaluate(synth_root, bundle_dir, tmp_path / "p.json", "--no-translate")

    assert translated["translated"] is True and plain["translated"] is False
    assert _figures(translated) == want_translated
    assert _figures(plain) == want_plain


def test_evaluate_cli_fused_view_is_the_services_and_follows_the_bundle(
    bundle: Bundle,
    bundle_dir: Path,
    dataset: PKUSketchDataset,
    synth_root: Path,
    tmp_path: Path,
) -> None:
    e, q_sketch, q_photo = _both_views(bundle, dataset)
    both = q_sketch + q_photo
    q_fused = both / np.linalg.norm(both, axis=1, keepdims=True)
    want = _expected(distances(q_fused, e.gallery), e)
    translated = _evaluate(synth_root, bundle_dir, tmp_path / "t.json")
    assert want != _figures(translated), "fused and translated must differ here"

    fused = _evaluate(synth_root, bundle_dir, tmp_path / "f.json", "--view", "fused")
    assert fused["view"] == "fused" and fused["splits"][0]["fused"] is True
    assert _figures(fused) == want

    # A bundle whose manifest says fused is evaluated fused unless told otherwise, with the
    # translation weight it names.
    own = tmp_path / "fused-bundle"
    shutil.copytree(bundle_dir, own)
    assert main(["model", "annotate", str(own), "--query-view", "fused"]) == 0
    default = _evaluate(synth_root, own, tmp_path / "d.json")
    assert default["view"] == "fused" and _figures(default) == want
    assert main(["model", "annotate", str(own), "--translation-weight", "0.2"]) == 0
    light = 0.8 * q_sketch + 0.2 * q_photo
    want_light = _expected(
        distances(light / np.linalg.norm(light, axis=1, keepdims=True), e.gallery), e
    )
    assert want_light != want, "the weight must change the figures here"
    assert _figures(_evaluate(synth_root, own, tmp_path / "w.json")) == want_light
    plain = _evaluate(synth_root, own, tmp_path / "p.json", "--no-translate")
    assert plain["view"] == "sketch" and plain["translated"] is False


def test_evaluate_cli_reranks_with_k1_k2_and_lambda_as_given(
    bundle: Bundle,
    bundle_dir: Path,
    dataset: PKUSketchDataset,
    synth_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls: list[tuple[dict[str, Any], np.ndarray]] = []

    def spy(*args: Any, **kwargs: Any) -> np.ndarray:
        out = k_reciprocal_rerank(*args, **kwargs)
        calls.append((kwargs, out))
        return out

    monkeypatch.setattr(evaluate_mod, "k_reciprocal_rerank", spy)
    rr = ["--no-translate", "--rerank", "--k2", "2", "--lambda-value", "0.5"]
    k4 = _evaluate(synth_root, bundle_dir, tmp_path / "k4.json", *rr, "--k1", "4")
    k8 = _evaluate(synth_root, bundle_dir, tmp_path / "k8.json", *rr, "--k1", "8")
    assert [kwargs for kwargs, _ in calls] == [
        {"k1": 4, "k2": 2, "lambda_value": 0.5},
        {"k1": 8, "k2": 2, "lambda_value": 0.5},
    ]
    assert not np.array_equal(calls[0][1], calls[1][1]), "another k1, other distances"
    plain = _evaluate(synth_root, bundle_dir, tmp_path / "plain.json", "--no-translate")
    assert len(calls) == 2, "no re-ranking without --rerank"
    assert "rank1 " in capsys.readouterr().out

    for report, k1 in ((k4, 4), (k8, 8)):
        assert report["reranked"] is True and report["splits"][0]["reranked"] is True
        assert report["rerank_params"] == {"k1": k1, "k2": 2, "lambda_value": 0.5}
    assert plain["reranked"] is False and plain["rerank_params"] is None

    # The same figures from the embeddings directly, re-ranked with the parameters given on
    # the command line.
    e = embed_test_set(bundle.embedder, None, dataset, dataset.pids)
    want_k4 = _reranked(e.query, e.gallery, RerankParams(4, 2, 0.5))
    np.testing.assert_array_equal(calls[0][1], want_k4)
    assert _figures(k4) == _expected(want_k4, e)
    assert _figures(k8) == _expected(_reranked(e.query, e.gallery, RerankParams(8, 2, 0.5)), e)
    assert _figures(plain) == _expected(distances(e.query, e.gallery), e)


# --------------------------------------------------------------------------- sketchreid crossval


def _crossval(synth_root: Path, workdir: Path, out: Path, *extra: str) -> dict[str, Any]:
    """One split (4 test, 8 training identities), members resnet8 and resnet14, 1 epoch."""
    argv = ["crossval", "--data-root", str(synth_root), "--splits", "1", "--test-size", "4"]
    argv += ["--preset", "smoke", "--arch", "resnet8,resnet14", "--epochs", "1"]
    argv += ["--workdir", str(workdir), "--no-progress", *extra, "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert isinstance(report, dict)
    return report


@pytest.mark.slow
def test_crossval_per_member_reports_each_member_alone(
    dataset: PKUSketchDataset,
    synth_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    workdir = tmp_path / "runs"
    report = _crossval(
        synth_root, workdir, tmp_path / "cv.json", "--per-member", "--translator", "--keep-bundles"
    )
    out = capsys.readouterr().out

    members = ["resnet8", "resnet14"]
    ensemble = ["plain", "rerank", "translated", "translated+rerank", "fused", "fused+rerank"]
    names = [*ensemble, *members, *(f"{m}+rerank" for m in members)]
    assert set(report["variants"]) == set(names)
    for name in names:
        assert f"{name:>18}: rank1 " in out
        assert len(report["variants"][name]["splits"]) == 1

    # Recompute every variant from the split's bundle: each member variant is that member's
    # network alone (untranslated sketches), the others are the ensemble's.
    split = random_splits(dataset, 1, seed=0, test_size=4)[0]
    assert report["protocol"]["split_seeds"] == [split.seed]
    bundle = load_bundle(workdir / "splits" / "split00")
    m = bundle.manifest
    assert [entry.name for entry in m.members] == members
    assert bundle.translator is not None
    embedded = {
        "plain": embed_test_set(bundle.embedder, None, dataset, split.test),
        "translated": embed_test_set(bundle.embedder, bundle.translator, dataset, split.test),
    }
    both = embedded["plain"].query + embedded["translated"].query
    fused = both / np.linalg.norm(both, axis=1, keepdims=True)
    embedded["fused"] = dataclasses.replace(embedded["translated"], query=fused)
    for entry, net in zip(m.members, bundle.members, strict=True):
        alone = Embedder(
            [net], m.input_size, m.mean, m.std, sketch_grey=m.sketch_grey, tta_flip=m.tta_flip
        )
        embedded[entry.name] = embed_test_set(alone, None, dataset, split.test)
    for name, e in embedded.items():
        for rerank in (None, RerankParams()):
            variant = name + ("+rerank" if rerank else "")
            variant = "rerank" if variant == "plain+rerank" else variant
            want = score(e, rerank=rerank)
            got = report["variants"][variant]["splits"][0]
            assert _figures(got) == _figures(want), variant
            assert got["translated"] is (name in ("translated", "fused")), variant
            assert got["fused"] is (name == "fused"), variant
            assert got["reranked"] is (rerank is not None), variant
            assert got["n_queries"] == 4 and got["n_gallery"] == 8


@pytest.mark.slow
def test_crossval_reports_members_alone_only_with_per_member(
    synth_root: Path, tmp_path: Path
) -> None:
    report = _crossval(synth_root, tmp_path / "runs", tmp_path / "cv.json")
    assert report["archs"] == ["resnet8", "resnet14"]
    assert set(report["variants"]) == {"plain", "rerank"}
    assert not (tmp_path / "runs" / "splits" / "split00").exists()  # no --keep-bundles


def test_evaluate_cli_runs_at_the_precision_asked(
    bundle_dir: Path, synth_root: Path, tmp_path: Path
) -> None:
    plain = ("--no-translate",)
    fp32 = _evaluate(synth_root, bundle_dir, tmp_path / "f.json", *plain)
    bf16 = _evaluate(synth_root, bundle_dir, tmp_path / "b.json", *plain, "--precision", "bf16")
    assert fp32["inference"] == {"backend": "torch", "precision": "fp32"}
    assert bf16["inference"] == {"backend": "torch", "precision": "bf16"}


@pytest.mark.slow
def test_crossval_reuse_evaluates_kept_bundles_and_their_ensemble(
    dataset: PKUSketchDataset, synth_root: Path, tmp_path: Path
) -> None:
    """Two single-member runs kept with --keep-bundles, then `--reuse A --reuse B`: no
    training, the figures are those of the two members' ensemble, each member alone matches
    its own run, and bundles of another split are refused."""

    def run(workdir: Path, out: Path, *extra: str) -> dict[str, Any]:
        argv = ["crossval", "--data-root", str(synth_root), "--splits", "1", "--test-size", "4"]
        argv += ["--preset", "smoke", "--epochs", "1", "--workdir", str(workdir)]
        argv += ["--no-progress", *extra, "--json", str(out)]
        assert main(argv) == 0
        report = json.loads(out.read_text())
        assert isinstance(report, dict)
        return report

    a, b = tmp_path / "a", tmp_path / "b"
    run(tmp_path / "plain", tmp_path / "p.json", "--arch", "resnet8")
    assert not (tmp_path / "plain" / "splits" / "split00").exists()  # not kept by default
    ra = run(a, tmp_path / "a.json", "--arch", "resnet8", "--keep-bundles")
    rb = run(b, tmp_path / "b.json", "--arch", "resnet14", "--keep-bundles")
    both = run(
        tmp_path / "c", tmp_path / "c.json", "--reuse", str(a), "--reuse", str(b), "--per-member"
    )
    assert both["archs"] == ["resnet8", "resnet14"]
    assert both["reused"] == [str(a), str(b)]
    assert [p["name"] for p in both["reused_presets"]] == ["smoke", "smoke"]
    assert not (tmp_path / "c" / "splits").exists()  # nothing trained, nothing written

    v = both["variants"]
    assert _figures(v["resnet8"]["splits"][0]) == _figures(ra["variants"]["plain"]["splits"][0])
    assert _figures(v["resnet14"]["splits"][0]) == _figures(rb["variants"]["plain"]["splits"][0])
    split = random_splits(dataset, 1, seed=0, test_size=4)[0]
    bundles = [load_bundle(w / "splits" / "split00") for w in (a, b)]
    members = [net for bundle in bundles for net in bundle.members]
    m = bundles[0].manifest
    ensemble = Embedder(members, m.input_size, m.mean, m.std, tta_flip=m.tta_flip)
    want = score(embed_test_set(ensemble, None, dataset, split.test))
    assert _figures(v["plain"]["splits"][0]) == _figures(want)
    assert ensemble.dim == bundles[0].embedder.dim + bundles[1].embedder.dim
    twice = combine_bundles([bundles[0], bundles[0]])  # two runs of one architecture
    assert [e.name for e in twice.manifest.members] == ["resnet8", "resnet8-1"]
    assert twice.embedder.dim == 2 * bundles[0].embedder.dim

    argv = ["crossval", "--data-root", str(synth_root), "--splits", "1", "--test-size", "4"]
    argv += ["--split-seed", "7", "--reuse", str(a), "--json", str(tmp_path / "x.json")]
    assert main(argv) != 0


def _kept_split_bundle(
    workdir: Path, dataset: PKUSketchDataset, train: list[int], seed: int
) -> torch.nn.Module:
    """A random-weight one-member bundle kept as `crossval --keep-bundles` keeps split 0's
    (trained, its manifest says, on ``train``), its BN neck set from the set's images as in
    tests/conftest.py's random bundle so that its embeddings spread out. Returns the net."""
    from app.ml.bundle.store import save_bundle
    from app.ml.models.resnet_cifar import MemberSpec, build_member
    from app.ml.transforms import to_batch

    torch.manual_seed(seed)
    spec = MemberSpec(arch="resnet8", num_classes=12, fc_dim=16, input_size=SIZE, bn_neck=True)
    net = build_member(spec)
    photos = to_batch([load_image(s.path) for s in dataset.photos], SIZE)
    sketches = to_batch([load_image(s.path) for s in dataset.sketches], SIZE, grey=True)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        net.train()(torch.cat([photos, sketches]))
    save_bundle(
        workdir / "splits" / "split00",
        name=f"kept{seed}",
        version="cv",
        members=[("resnet8", spec, net.eval(), {})],
        input_size=SIZE,
        training={"train_pids": sorted(train)},
    )
    return net


def test_crossval_reuse_of_two_bundles_scores_both_members_together(
    dataset: PKUSketchDataset, synth_root: Path, tmp_path: Path
) -> None:
    """`crossval --reuse A --reuse B`: the ensemble rows are the figures of both members'
    nets embedding together, on 10 queries x 20 photos, where the two-member figures differ
    from either member's, so a crossval that dropped a member fails. (The training crossval
    tests run 4 queries x 8 photos, where one member and two gave the same figures.)"""
    split = random_splits(dataset, 1, seed=0, test_size=10)[0]
    nets = [
        _kept_split_bundle(tmp_path / name, dataset, list(split.train), seed)
        for name, seed in (("a", 1), ("b", 2))
    ]
    out = tmp_path / "cv.json"
    argv = ["crossval", "--data-root", str(synth_root), "--splits", "1", "--test-size", "10"]
    argv += ["--reuse", str(tmp_path / "a"), "--reuse", str(tmp_path / "b"), "--per-member"]
    argv += ["--workdir", str(tmp_path / "w"), "--no-progress", "--json", str(out)]
    assert main(argv) == 0
    variants = json.loads(out.read_text())["variants"]

    def figures(members: list[torch.nn.Module], rerank: RerankParams | None) -> dict[str, Any]:
        embedder = Embedder(members, SIZE)  # the bundles' defaults: flip TTA on
        return _figures(score(embed_test_set(embedder, None, dataset, split.test), rerank=rerank))

    for name, rerank in (("plain", None), ("rerank", RerankParams())):
        got = _figures(variants[name]["splits"][0])
        assert got["n_queries"] == 10 and got["n_gallery"] == 20
        assert got == figures(nets, rerank), name
        for one, net in zip(("resnet8", "resnet8-1"), nets, strict=True):
            alone = figures([net], rerank)
            label = one + ("+rerank" if rerank else "")
            assert _figures(variants[label]["splits"][0]) == alone, label
            assert alone != got, f"{label}: one member must score otherwise than two here"


@pytest.mark.slow
def test_crossval_only_splits_shares_one_draw_among_processes(
    dataset: PKUSketchDataset, synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--only-splits` runs part of the `--splits` draw: the same test identities and folder
    names as the full run, so two processes can split the work and `--reuse` evaluates their
    kept bundles together over the whole draw."""
    work = tmp_path / "w"

    def run(out: Path, *extra: str) -> int:
        argv = ["crossval", "--data-root", str(synth_root), "--splits", "2", "--test-size", "4"]
        argv += ["--no-progress", *extra, "--json", str(out)]
        return main(argv)

    train = ["--preset", "smoke", "--arch", "resnet8", "--epochs", "1", "--keep-bundles"]
    assert run(tmp_path / "1.json", *train, "--only-splits", "1", "--workdir", str(work)) == 0
    part = json.loads((tmp_path / "1.json").read_text())
    draw = random_splits(dataset, 2, seed=0, test_size=4)
    assert part["protocol"]["split_indices"] == [1]
    assert part["protocol"]["split_seeds"] == [draw[1].seed]
    assert [r["split"] for r in part["variants"]["plain"]["splits"]] == [1]
    assert (work / "splits" / "split01").is_dir() and not (work / "splits" / "split00").exists()
    trained = load_bundle(work / "splits" / "split01").manifest.training["train_pids"]
    assert sorted(trained) == sorted(draw[1].train)

    assert (
        run(tmp_path / "r.json", "--reuse", str(work), "--workdir", str(tmp_path / "c")) != 0
    )  # split 0 not there yet
    assert run(tmp_path / "0.json", *train, "--only-splits", "0", "--workdir", str(work)) == 0
    assert run(tmp_path / "r.json", "--reuse", str(work), "--workdir", str(tmp_path / "c")) == 0
    whole = json.loads((tmp_path / "r.json").read_text())["variants"]["plain"]["splits"]
    first = json.loads((tmp_path / "0.json").read_text())["variants"]["plain"]["splits"]
    assert [_figures(r) for r in whole] == [_figures(first[0]), _figures(part_row(part))]

    capsys.readouterr()
    assert run(tmp_path / "x.json", *train, "--only-splits", "2", "--workdir", str(work)) == 2
    assert "the draw has splits 0-1" in capsys.readouterr().err


def part_row(report: dict[str, Any]) -> dict[str, Any]:
    (row,) = report["variants"]["plain"]["splits"]
    assert isinstance(row, dict)
    return row


def test_fuse_views_weights_move_the_query_between_the_views() -> None:
    rng = np.random.default_rng(0)
    a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in rng.normal(size=(2, 5, 8)))
    np.testing.assert_allclose(fuse_views(a, b, weights=(1, 0)), a, atol=1e-6)
    np.testing.assert_allclose(fuse_views(a, b, weights=(0, 2)), b, atol=1e-6)
    mix = 0.7 * a + 0.3 * b
    np.testing.assert_allclose(
        fuse_views(a, b, weights=(0.7, 0.3)),
        mix / np.linalg.norm(mix, axis=1, keepdims=True),
        atol=1e-6,
    )
    np.testing.assert_array_equal(fuse_views(a, b), fuse_views(a, b, weights=(1, 1)))
    for bad in ((1,), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="weight"):
            fuse_views(a, b, weights=bad)
