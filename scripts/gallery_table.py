"""Markdown tables by gallery size from `sketchreid crossval --distractors ... --json` reports.

One row per report and variant (plain, rerank, ...), one column group per number of
distractors: Rank-1, Rank-10, Rank-100 and mAP, mean over the splits (± std for mAP).

python scripts/gallery_table.py LABEL=runs/cv-a.json [LABEL=runs/cv-b.json ...]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

SIZED = re.compile(r"^(?P<variant>.+)@(?P<size>\d+)$")


def sized_variants(report: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    """variant -> size -> figures, from the report's ``NAME@SIZE`` variants."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for name, figures in report["variants"].items():
        match = SIZED.match(name)
        if match:
            out.setdefault(match["variant"], {})[int(match["size"])] = figures
    return out


def cell(figures: dict[str, Any]) -> str:
    def m(key: str) -> str:
        return f"{100 * figures[key]['mean']:.1f}" if key in figures else "–"

    mean_ap = f"{100 * figures['mAP']['mean']:.1f} ± {100 * figures['mAP']['std']:.1f}"
    return f"{m('rank1')} / {m('rank10')} / {m('rank100')} / {mean_ap}"


def table(reports: list[tuple[str, dict[str, Any]]]) -> str:
    sizes = sorted({s for _, r in reports for v in sized_variants(r).values() for s in v})
    head = "| run | variant | " + " | ".join(f"{s:,} distractors" for s in sizes) + " |"
    lines = [head, "|" + "---|" * (2 + len(sizes))]
    for label, report in reports:
        splits = report["protocol"]["n_splits"]
        params = report.get("rerank_params") or {}
        for variant, by_size in sized_variants(report).items():
            name = variant
            if "rerank" in variant and params:
                cands = (report.get("distractors") or {}).get("rerank_candidates")
                name += f" (k1 {params['k1']}, k2 {params['k2']}, top {cands})"
            cells = [cell(by_size[s]) if s in by_size else "" for s in sizes]
            lines.append(f"| {label} ({splits} splits) | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", metavar="LABEL=JSON")
    args = parser.parse_args()
    reports = []
    for item in args.reports:
        label, sep, path = item.partition("=")
        if not sep:
            label, path = Path(item).stem, item
        reports.append((label, json.loads(Path(path).read_text())))
    print("Cells: Rank-1 / Rank-10 / Rank-100 / mAP ± std, % (mean over splits)\n")
    print(table(reports))


if __name__ == "__main__":
    main()
