"""`sketchreid evaluate` extras: --feedback (the relevance-feedback protocol, with the service's
query builder), --ranklist DIR (one picture per query) and --test-ids heldout (a
cross-validation's per-split bundles, each on the identities it was not trained on).

A random-weight bundle (tests/conftest.py) on the session's 12-identity synthetic set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import app.ml.evaluation.feedback_eval as feedback_eval
from app.cli.main import main
from app.ml.bundle.store import Bundle, load_bundle, resave
from app.ml.data.pku import PKUSketchDataset, load_pku_sketch
from app.ml.evaluation.evaluate import embed_test_set, score
from app.ml.evaluation.feedback_eval import evaluate_feedback
from app.ml.evaluation.ranklist import FRAME, GAP, TILE
from app.ml.retrieval.feedback import FeedbackWeights, build_query


@pytest.fixture(scope="module")
def dataset(synth_root: Path) -> PKUSketchDataset:
    return load_pku_sketch(synth_root)


@pytest.fixture(scope="module")
def bundle(random_bundle_dir: Path) -> Bundle:
    return load_bundle(random_bundle_dir)


def _evaluate(
    synth_root: Path, models: list[Path], out: Path, *extra: str, code: int = 0
) -> dict[str, Any]:
    argv = ["evaluate", "--data-root", str(synth_root), "--model", *map(str, models)]
    assert main([*argv, *extra, "--json", str(out)]) == code
    return json.loads(out.read_text()) if code == 0 else {}


def test_feedback_figures_are_those_of_the_protocol_with_the_service_query(
    bundle: Bundle,
    random_bundle_dir: Path,
    dataset: PKUSketchDataset,
    synth_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls: list[FeedbackWeights] = []

    def spy(*args: Any) -> np.ndarray:
        calls.append(args[3])
        return build_query(*args)

    monkeypatch.setattr(feedback_eval, "build_query", spy)
    report = _evaluate(
        synth_root,
        [random_bundle_dir],
        tmp_path / "f.json",
        "--test-ids",
        "all",
        "--feedback",
        "--feedback-weights",
        "1,2,0.5",
    )
    weights = FeedbackWeights(1.0, 2.0, 0.5)
    assert calls and set(calls) == {weights}, "the service's query builder, these weights"
    e = embed_test_set(bundle.embedder, bundle.translator, dataset, dataset.pids)
    want = evaluate_feedback(e, weights)
    feedback = report["feedback"]
    assert feedback["weights"] == weights.as_json()
    for name, figures in want.items():
        got = feedback["variants"][name]
        for key in ("rank1", "rank5", "rank10", "mAP"):
            assert got[key]["mean"] == figures[key], (name, key)
    assert want["confirmed"]["n_queries"] == 24  # 12 sketches x 2 photos confirmed in turn
    assert want["confirmed"] != want["plain"]
    assert "relevance feedback" in capsys.readouterr().out
    # The ordinary figures are unchanged by --feedback.
    assert report["rank1"] == score(e)["rank1"] and report["mAP"] == score(e)["mAP"]


def test_ranklist_writes_one_picture_per_query(
    random_bundle_dir: Path, synth_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "lists"
    _evaluate(synth_root, [random_bundle_dir], tmp_path / "r.json", "--test-ids", "all",
              "--ranklist", str(out))  # fmt: skip
    pictures = sorted((out / "split00").glob("*.png"))
    assert [p.stem for p in pictures] == sorted(str(pid) for pid in range(1, 13))
    cell = TILE[0] + 2 * FRAME + GAP
    translated = Image.open(pictures[0]).size
    assert translated[0] == GAP + 12 * cell + 3 * GAP  # sketch, translation, top 10
    _evaluate(synth_root, [random_bundle_dir], tmp_path / "n.json", "--test-ids", "all",
              "--no-translate", "--ranklist", str(tmp_path / "plain"))  # fmt: skip
    plain = Image.open(tmp_path / "plain" / "split00" / pictures[0].name).size
    assert translated[0] - plain[0] == cell  # no translation tile


def test_heldout_evaluates_each_bundle_on_the_identities_it_did_not_see(
    bundle: Bundle, dataset: PKUSketchDataset, synth_root: Path, tmp_path: Path
) -> None:
    trained = {"a": list(range(1, 9)), "b": list(range(5, 13))}
    dirs = []
    for name, pids in trained.items():
        resave(bundle, tmp_path / name, training={"train_pids": pids})
        dirs.append(tmp_path / name)
    report = _evaluate(synth_root, dirs, tmp_path / "h.json", "--test-ids", "heldout")
    assert report["n_splits"] == 2 and report["models"] == [str(d) for d in dirs]
    assert [s["test_pids"] for s in report["splits"]] == [[9, 10, 11, 12], [1, 2, 3, 4]]
    assert all(s["train_test_overlap"] == 0 for s in report["splits"])
    for split, pids in zip(report["splits"], ([9, 10, 11, 12], [1, 2, 3, 4]), strict=True):
        e = embed_test_set(bundle.embedder, bundle.translator, dataset, pids)
        assert split["mAP"] == score(e)["mAP"] and split["n_queries"] == 4
    maps = [s["mAP"] for s in report["splits"]]
    assert report["mAP"]["mean"] == pytest.approx(float(np.mean(maps)))


def test_several_models_need_heldout_and_heldout_needs_the_training_ids(
    random_bundle_dir: Path, synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _evaluate(synth_root, [random_bundle_dir] * 2, tmp_path / "x.json", "--test-ids", "all",
              code=2)  # fmt: skip
    assert "--test-ids heldout" in capsys.readouterr().err
    _evaluate(synth_root, [random_bundle_dir], tmp_path / "y.json", "--test-ids", "heldout",
              code=2)  # fmt: skip
    assert "does not record its training identities" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--data-root", str(synth_root), "--model", str(random_bundle_dir),
              "--test-ids", "all", "--feedback-weights", "1,0", "--json", "z.json"])  # fmt: skip
    assert "SKETCH,CONFIRMED,REJECTED" in capsys.readouterr().err
