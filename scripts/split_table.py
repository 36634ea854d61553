"""Markdown tables from per-split `sketchreid evaluate --test-ids heldout --distractors ... --json`
reports: one configuration is one report per split (run side by side, one process a split),
merged here into the mean over the splits, with each configuration compared split by split
with a baseline.

    python scripts/split_table.py --baseline fp32 'fp32=runs/ev/fp32-sketch-split*.json' \
        'int8=runs/ev/int8-sketch-split*.json' [--variant plain --variant rerank]

Rows: configuration and variant (plain, rerank); columns: each gallery size's Rank-1 / Rank-10
/ mAP (± std of mAP over the splits); the last column says on how many of the splits both
configurations share the configuration's mAP is higher / lower than the baseline's, at each
size. Splits are matched by the report's test identities, so a missing split never pairs two
different draws.
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
from pathlib import Path
from typing import Any

Figures = dict[str, float]
"""rank1, rank10, mAP of one split at one size and variant."""


def split_figures(report: dict[str, Any]) -> tuple[str, dict[tuple[int, str], Figures]]:
    """(split identity, {(size, variant): figures}) of one single-split evaluate report."""
    if report.get("n_splits") != 1 or "distractors" not in report:
        raise ValueError("expected a one-split `evaluate --distractors` report")
    test = report["splits"][0]["test_pids"]
    key = ",".join(str(p) for p in sorted(test))
    out: dict[tuple[int, str], Figures] = {}
    for size, row in report["distractors"]["by_size"].items():
        for variant in ("plain", "rerank"):
            if variant in row:
                out[(int(size), variant)] = {
                    k: float(row[variant][k]["mean"]) for k in ("rank1", "rank10", "mAP")
                }
    return key, out


def load(pattern: str) -> dict[str, dict[tuple[int, str], Figures]]:
    """split identity -> figures, for every report the glob ``pattern`` matches."""
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise SystemExit(f"no report matches {pattern!r}")
    merged: dict[str, dict[tuple[int, str], Figures]] = {}
    for path in paths:
        key, figures = split_figures(json.loads(Path(path).read_text()))
        if key in merged:
            raise SystemExit(f"{path}: a second report of the same split")
        merged[key] = figures
    return merged


def _cell(values: list[Figures]) -> str:
    def mean(k: str) -> float:
        return 100 * statistics.fmean(v[k] for v in values)

    sd = 100 * statistics.pstdev(v["mAP"] for v in values) if len(values) > 1 else 0.0
    return f"{mean('rank1'):.1f} / {mean('rank10'):.1f} / {mean('mAP'):.1f} ± {sd:.1f}"


def table(
    configs: list[tuple[str, dict[str, dict[tuple[int, str], Figures]]]],
    baseline: str | None,
    variants: list[str],
) -> str:
    sizes = sorted({size for _, c in configs for f in c.values() for size, _ in f})
    base = dict(configs).get(baseline) if baseline else None
    head = "| configuration | variant | splits | " + " | ".join(
        f"{s:,} distractors: R1 / R10 / mAP" for s in sizes
    )
    head += f" | mAP vs {baseline}, better / worse (splits) |" if base is not None else " |"
    cols = len(sizes) + 3 + (1 if base is not None else 0)
    lines = [head, "|" + "---|" * cols]
    for label, splits in configs:
        for variant in variants:
            cells, versus = [], []
            for size in sizes:
                values = [f[(size, variant)] for f in splits.values() if (size, variant) in f]
                cells.append(_cell(values) if values else "–")
                if base is not None and label != baseline:
                    pairs = [
                        (f[(size, variant)]["mAP"], base[k][(size, variant)]["mAP"])
                        for k, f in splits.items()
                        if k in base and (size, variant) in f and (size, variant) in base[k]
                    ]
                    if pairs:
                        better = sum(a > b for a, b in pairs)
                        worse = sum(a < b for a, b in pairs)
                        versus.append(f"{size:,}: {better} / {worse}")
            row = f"| {label} | {variant} | {len(splits)} | " + " | ".join(cells)
            if base is not None:
                row += " | " + ("; ".join(versus) if versus else "") + " |"
            else:
                row += " |"
            lines.append(row)
    return "\n".join(lines)


def as_json(
    configs: list[tuple[str, dict[str, dict[tuple[int, str], Figures]]]],
) -> dict[str, Any]:
    """label -> test identities of the split -> "SIZE/VARIANT" -> figures (4 decimals)."""
    return {
        label: {
            split: {
                f"{size}/{variant}": {k: round(v, 4) for k, v in figures.items()}
                for (size, variant), figures in sorted(rows.items())
            }
            for split, rows in splits.items()
        }
        for label, splits in configs
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", metavar="LABEL=GLOB")
    parser.add_argument("--baseline", help="the LABEL the others are compared with")
    parser.add_argument(
        "--variant", action="append", choices=("plain", "rerank"), help="default: both"
    )
    parser.add_argument(
        "--json", type=Path, help="also write every split's figures here (label -> split -> ...)"
    )
    args = parser.parse_args(argv)
    configs = []
    for item in args.configs:
        label, sep, pattern = item.partition("=")
        if not sep:
            parser.error(f"expected LABEL=GLOB, got {item!r}")
        configs.append((label, load(pattern)))
    if args.baseline and args.baseline not in dict(configs):
        parser.error(f"--baseline {args.baseline} is not one of the labels")
    print(table(configs, args.baseline, args.variant or ["plain", "rerank"]))
    if args.json:
        args.json.write_text(json.dumps(as_json(configs), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
