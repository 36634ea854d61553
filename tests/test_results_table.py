"""scripts/results_table.py: the rows of docs/results.md say what each run changed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

from app.ml.train.config import PRESETS

ROOT = Path(__file__).resolve().parents[1]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "results_table", ROOT / "scripts/results_table.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _variant(r1: float) -> dict[str, dict[str, float]]:
    return {k: {"mean": r1, "std": 0.05} for k in ("rank1", "rank5", "rank10", "mAP")}


def test_rows_name_the_changed_fields_and_rerank_parameters(tmp_path: Path) -> None:
    preset = PRESETS["ship"].model_dump(mode="json")
    preset["finetune"]["triplet_weight"] = 1.0
    report = {
        "archs": ["resnet56", "resnet110"],
        "preset": preset,
        "pretrained": "model_store/pretrained",
        "rerank_params": {"k1": 6, "k2": 3, "lambda_value": 0.3},
        "protocol": {"n_splits": 10},
        "train_seconds_mean": 187.4,
        "variants": {"plain": _variant(0.175), "rerank": _variant(0.117)},
    }
    path = tmp_path / "cv-x.json"
    path.write_text(json.dumps(report))
    plain, rerank = _script().rows(path)
    assert plain == (
        "| cv-x | resnet56,resnet110 | ship finetune.triplet_weight=1.0 | from "
        "model_store/pretrained | plain | 17.5 ± 5.0 | 17.5 ± 5.0 | 17.5 ± 5.0 | 17.5 ± 5.0 "
        "| 10 | 187 |"
    )
    assert "| rerank (k1 6, k2 3, λ 0.3) | 11.7 ± 5.0 |" in rerank

    report["preset"] = PRESETS["ship"].model_dump(mode="json")
    path.write_text(json.dumps(report))
    assert "| ship | from" in _script().rows(path)[0]


def test_rows_of_reused_runs_name_each_run_and_recipe(tmp_path: Path) -> None:
    ship = PRESETS["ship"].model_dump(mode="json")
    triplet = PRESETS["ship"].model_dump(mode="json")
    triplet["finetune"]["triplet_weight"] = 1.0
    report = {
        "archs": ["resnet56", "resnet56"],
        "preset": ship,
        "pretrained": None,
        "reused": ["runs/cv-ship10", "runs/cv-xtriplet10"],
        "reused_presets": [ship, triplet],
        "protocol": {"n_splits": 10},
        "train_seconds_mean": 303.0,
        "variants": {"plain": _variant(0.183)},
    }
    path = tmp_path / "cv-pair.json"
    path.write_text(json.dumps(report))
    (row,) = _script().rows(path)
    assert "| ship + ship finetune.triplet_weight=1.0 |" in row
    assert "| members of cv-ship10 + cv-xtriplet10 |" in row
