"""scripts/split_table.py: per-split evaluate reports merged into the mean over the splits and
compared split by split with a baseline (real `evaluate --distractors` reports of the test
bundle, so the script reads what the command writes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

from app.cli.main import main
from app.ml.bundle.store import load_bundle, resave

ROOT = Path(__file__).resolve().parents[1]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("split_table", ROOT / "scripts/split_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reports_of_two_splits_merge_into_their_mean_and_pair_by_split(
    random_bundle_dir: Path, synth_root: Path, tmp_path: Path
) -> None:
    script = _script()
    reports = []
    for i, trained in enumerate((range(1, 9), range(5, 13))):
        model = tmp_path / f"m{i}"
        resave(load_bundle(random_bundle_dir), model, training={"train_pids": list(trained)})
        out = tmp_path / f"r{i}.json"
        argv = ["evaluate", "--data-root", str(synth_root), "--model", str(model)]
        argv += ["--test-ids", "heldout", "--no-translate", "--rerank", "--json", str(out)]
        argv += ["--distractors", str(synth_root / "photo"), "--distractor-sizes", "0,5"]
        argv += ["--distractor-cache", str(tmp_path / "dc")]
        assert main(argv) == 0
        reports.append(json.loads(out.read_text()))
    merged = script.load(str(tmp_path / "r*.json"))
    assert len(merged) == 2
    want = [r["distractors"]["by_size"]["5"]["plain"]["mAP"]["mean"] for r in reports]
    text = script.table([("a", merged), ("b", merged)], "a", ["plain"])
    row = next(line for line in text.splitlines() if line.startswith("| b | plain"))
    assert f"{100 * sum(want) / 2:.1f} ± {100 * abs(want[0] - want[1]) / 2:.1f}" in row
    assert row.endswith("0: 0 / 0; 5: 0 / 0 |")  # the same reports: never better, never worse
    out = tmp_path / "t.json"
    assert script.main(["a=" + str(tmp_path / "r*.json"), "--json", str(out)]) == 0
    saved = json.loads(out.read_text())["a"]
    assert sorted(round(s["5/plain"]["mAP"], 4) for s in saved.values()) == sorted(
        round(v, 4) for v in want
    )
