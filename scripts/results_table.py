"""Markdown rows (mean ± std over splits) from `sketchreid crossval --json` reports.

python scripts/results_table.py runs/cv-a.json [runs/cv-b.json ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from app.ml.train.config import PRESETS


def pct(entry: dict[str, float]) -> str:
    return f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"


def rerank_label(report: dict[str, Any], variant: str) -> str:
    params = report.get("rerank_params")
    if "rerank" not in variant or not params:
        return ""
    return f" (k1 {params['k1']}, k2 {params['k2']}, λ {params['lambda_value']})"


def pretraining(report: dict[str, object]) -> str:
    """Where the members started: a pre-trained folder, pre-training folders, or nothing;
    for an evaluation of earlier runs' kept bundles, those runs."""
    if report.get("reused"):
        return "members of " + " + ".join(Path(str(r)).name for r in report["reused"])
    if report.get("pretrained"):
        return f"from {report['pretrained']}"
    roots = report.get("pretrain_roots") or (
        [report["pretrain_root"]] if report.get("pretrain_root") else []
    )
    return "+".join(Path(str(r)).name for r in roots) if roots else "no"  # type: ignore[union-attr]


def recipe_of(preset: dict[str, Any]) -> str:
    """A preset's name and the fields a run changed (``--set``), e.g.
    ``ship finetune.triplet_weight=1.0``."""
    base = PRESETS[preset["name"]].model_dump(mode="json")
    changed = sorted(
        f"{section}.{field}={json.dumps(value)}"
        for section, fields in preset.items()
        if isinstance(fields, dict)
        for field, value in fields.items()
        if base.get(section, {}).get(field) != value
    )
    return " ".join([preset["name"], *changed])


def recipe(report: dict[str, Any]) -> str:
    """The run's recipe; for an evaluation of reused runs, each run's, joined by " + "."""
    reused = [p for p in report.get("reused_presets") or [] if p]
    if reused:
        return " + ".join(dict.fromkeys(recipe_of(p) for p in reused))  # each recipe once
    return recipe_of(report["preset"])


def rows(path: Path) -> list[str]:
    report = json.loads(path.read_text())
    proto = report["protocol"]
    out = []
    for name, v in report["variants"].items():
        cells = [
            path.stem,
            ",".join(report["archs"]),
            recipe(report),
            pretraining(report),
            name + rerank_label(report, name),
            *(pct(v[k]) for k in ("rank1", "rank5", "rank10", "mAP")),
            str(proto["n_splits"]),
            f"{report['train_seconds_mean']:.0f}",
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("reports", nargs="+", type=Path, help="crossval --json files")
    args = parser.parse_args()
    print(
        "| run | members | recipe | pre-trained | variant | Rank-1 % | Rank-5 % | Rank-10 % "
        "| mAP % | splits | train s/split |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for path in args.reports:
        print("\n".join(rows(path)))


if __name__ == "__main__":
    main()
