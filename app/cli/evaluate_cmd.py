"""`sketchreid evaluate` (a trained bundle) and `sketchreid crossval` (train per split)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.cli.common import (
    add_split_options,
    command_line,
    existing_dir,
    load_dataset,
    positive_int,
    resolve_splits,
)
from app.cli.train_cmd import add_member_options, add_run_options, plan_from_args
from app.errors import UserInputError
from app.ml.bundle.onnx_files import CALIBRATIONS
from app.ml.bundle.store import Bundle, load_bundle
from app.ml.data.calibration import DEFAULT_CALIBRATION_IMAGES
from app.ml.data.pku import PKUSketchDataset
from app.ml.data.splits import Split
from app.ml.evaluation.crossval import cross_validate
from app.ml.evaluation.distractors import DistractorOptions
from app.ml.evaluation.evaluate import Extras, RerankParams, evaluate_runs, heldout_split
from app.ml.evaluation.plots import plot_cmc
from app.ml.infer.precision import SERVING_PRECISIONS
from app.ml.infer.query_views import QUERY_VIEWS
from app.ml.retrieval.feedback import FeedbackWeights


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "evaluate",
        help="Rank-1/5/10, mAP and CMC of a bundle: test sketches against test photos",
    )
    ev.add_argument("--data-root", type=existing_dir, required=True)
    ev.add_argument(
        "--model",
        type=existing_dir,
        required=True,
        nargs="+",
        help="bundle folder; several (e.g. a cross-validation's per-split bundles) with "
        "--test-ids heldout",
    )
    add_split_options(ev, required=True, heldout=True)
    _rerank_options(ev)
    how = ev.add_mutually_exclusive_group()
    how.add_argument(
        "--no-translate",
        action="store_true",
        help="embed the sketches themselves, not their translations (= --view sketch)",
    )
    how.add_argument(
        "--view",
        choices=QUERY_VIEWS,
        help="how a query sketch is embedded: as drawn, its translation, or both fused "
        "(default: the bundle's own view, as the service does)",
    )
    ev.add_argument(
        "--precision",
        choices=SERVING_PRECISIONS,
        default="fp32",
        help="inference precision (default fp32; bf16 = autocast, auto = bf16 where the "
        "hardware has it; int8 = ONNX Runtime's statically quantised graphs, as "
        "SKETCHREID_PRECISION=int8 serves them, made into --int8-cache when needed). int8 "
        "calibration never uses the test identities: each bundle is calibrated on the photos "
        "and sketches of its own training identities in --data-root (manifest "
        "training.train_pids) less every identity it is tested on, or, when the manifest "
        "records none, on synthetic people",
    )
    ev.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="torch (default): the bundle's PyTorch networks; onnx: ONNX Runtime's fp32 "
        "graphs, as `sketchreid serve` runs them (exported into --onnx-cache when needed, held "
        "to the export's parity bound; several times faster on a CPU). --precision int8 is "
        "always ONNX Runtime",
    )
    ev.add_argument(
        "--onnx-cache",
        type=Path,
        default=Path("runs/onnx-cache"),
        metavar="DIR",
        help="where --backend onnx keeps each bundle's fp32 graphs (default runs/onnx-cache)",
    )
    ev.add_argument(
        "--int8-cache",
        type=Path,
        default=Path("runs/int8-cache"),
        metavar="DIR",
        help="where --precision int8 keeps each bundle's int8 graphs (default runs/int8-cache)",
    )
    ev.add_argument(
        "--int8-images",
        type=positive_int,
        default=DEFAULT_CALIBRATION_IMAGES,
        metavar="N",
        help=f"int8 calibration: at most N photos and N sketches (default "
        f"{DEFAULT_CALIBRATION_IMAGES})",
    )
    ev.add_argument(
        "--int8-calibration",
        choices=CALIBRATIONS,
        default="minmax",
        help="int8 calibration: how activation ranges are chosen from the calibration images "
        "(default minmax, as `model prepare --int8`; percentile: the 99.999th percentile; "
        "entropy: the KL-optimal threshold)",
    )
    ev.add_argument(
        "--int8-float-ends",
        action="store_true",
        help="int8: keep the first convolution and the embedding layer in float (as "
        "`model prepare --int8 --float-ends`)",
    )
    ev.add_argument(
        "--feedback",
        action="store_true",
        help="also measure relevance feedback: confirm each photo of the person in turn, rank "
        "the person's photos from the other camera (docs/results.md)",
    )
    ev.add_argument(
        "--feedback-weights",
        type=_weights,
        metavar="SKETCH,CONFIRMED,REJECTED",
        help=f"Rocchio weights of --feedback (default: the service's, {_DEFAULT_WEIGHTS})",
    )
    ev.add_argument(
        "--ranklist",
        type=Path,
        metavar="DIR",
        help="write one picture per query (sketch, translation, top-10 crops framed green when "
        "correct, red when not) into DIR/splitNN/<person id>.png",
    )
    ev.add_argument(
        "--translation-sheet",
        type=Path,
        metavar="PNG",
        help="draw the first test identities' sketches, their translations and their true "
        "photos (one row a person) into this PNG (the first bundle's split)",
    )
    ev.add_argument(
        "--sheet-people",
        type=positive_int,
        default=8,
        help="people on the translation sheet (default 8)",
    )
    _distractor_options(ev)
    ev.add_argument(
        "--distractor-cache",
        type=Path,
        default=Path("runs/distractor-cache"),
        help="where distractor embeddings are cached per bundle (default runs/distractor-cache)",
    )
    ev.add_argument("--json", type=Path, required=True, help="where to write the figures")
    ev.add_argument("--plot", type=Path, help="draw the CMC curve into this PNG")
    ev.set_defaults(func=run_evaluate)

    cv = sub.add_parser(
        "crossval",
        help="train and evaluate one model per random identity split (mean ± std)",
    )
    cv.add_argument("--data-root", type=existing_dir, required=True)
    add_member_options(cv)
    add_run_options(cv)
    cv.add_argument("--splits", type=positive_int, default=10)
    cv.add_argument("--split-seed", type=int, default=0)
    cv.add_argument("--test-size", type=positive_int)
    cv.add_argument(
        "--only-splits",
        type=split_indices,
        metavar="LIST",
        help="run only these splits of the --splits draw, counted from 0: '5-9' or '0,2,4' "
        "(to share one draw among several processes; their kept bundles reuse together)",
    )
    cv.add_argument("--translator", action="store_true", help="also train and test a translator")
    cv.add_argument(
        "--per-member", action="store_true", help="also evaluate each ensemble member on its own"
    )
    cv.add_argument(
        "--keep-bundles",
        action="store_true",
        help="keep each split's bundle in WORKDIR/splits/splitNN (for `crossval --reuse` and "
        "`evaluate --test-ids heldout`, e.g. --feedback); by default they are deleted once "
        "evaluated",
    )
    cv.add_argument(
        "--reuse",
        type=existing_dir,
        action="append",
        default=[],
        metavar="WORKDIR",
        help="evaluate the bundles kept (--keep-bundles) in this earlier crossval work "
        "folder instead of training; repeat to evaluate the ensemble of several runs' members",
    )
    _rerank_options(cv)
    _distractor_options(cv)
    cv.add_argument("--json", type=Path, required=True)
    cv.add_argument("--plot", type=Path)
    cv.set_defaults(func=run_crossval)


def split_indices(value: str) -> list[int]:
    """'5-9' or '0,2,4' (or both: '0,5-7') -> sorted distinct split indices."""
    out: set[int] = set()
    try:
        for part in value.split(","):
            lo, sep, hi = part.strip().partition("-")
            first, last = int(lo), int(hi) if sep else int(lo)
            if first < 0 or last < first:
                raise ValueError
            out.update(range(first, last + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected split indices like '5-9' or '0,2,4', got {value!r}"
        ) from None
    return sorted(out)


def _rerank_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    from app.ml.retrieval.rerank import DEFAULT_K1, DEFAULT_K2, DEFAULT_LAMBDA

    p.add_argument("--k1", type=positive_int, default=DEFAULT_K1)
    p.add_argument("--k2", type=positive_int, default=DEFAULT_K2)
    p.add_argument("--lambda-value", type=float, default=DEFAULT_LAMBDA)


def _sizes(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in value.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 0:
        raise argparse.ArgumentTypeError(
            f"expected gallery sizes as numbers of distractors, e.g. 0,1000,5000, got {value!r}"
        )
    return sizes


def _distractor_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "distractors (large galleries)",
        "crops of people in no split, added to every split's gallery as non-matching "
        "identities; figures at each size asked",
    )
    g.add_argument(
        "--distractors",
        type=existing_dir,
        action="append",
        default=[],
        metavar="DIR",
        help="a Market-style or plain folder of person crops (repeatable)",
    )
    g.add_argument(
        "--distractors-max", type=positive_int, metavar="N", help="at most N (seeded shuffle)"
    )
    g.add_argument(
        "--distractor-sizes",
        type=_sizes,
        metavar="LIST",
        help="numbers of distractors to report, e.g. 0,1000,5000,20000 (default: 0 and all)",
    )
    g.add_argument(
        "--distractors-unseen",
        action="store_true",
        help="only crops of identities the bundle's pre-training did not train on",
    )
    g.add_argument(
        "--rerank-candidates",
        type=positive_int,
        default=100,
        metavar="N",
        help="with --rerank and distractors: re-rank each query's top N, as the service does "
        "(its SKETCHREID_RERANK_CANDIDATES, default 100)",
    )


def _distractors(args: argparse.Namespace) -> DistractorOptions | None:
    if not args.distractors:
        given = [
            flag
            for flag, value in (
                ("--distractors-max", args.distractors_max),
                ("--distractor-sizes", args.distractor_sizes),
                ("--distractors-unseen", args.distractors_unseen),
            )
            if value
        ]
        if given:
            raise UserInputError(f"{given[0]} needs --distractors DIR")
        return None
    if args.rerank_candidates < 2:
        raise UserInputError("--rerank-candidates must be at least 2")
    return DistractorOptions(
        folders=tuple(args.distractors),
        max_items=args.distractors_max,
        sizes=args.distractor_sizes,
        unseen_only=args.distractors_unseen,
        cache_dir=getattr(args, "distractor_cache", None),
        rerank_candidates=args.rerank_candidates,
    )


_DEFAULT_WEIGHTS = ",".join(f"{v:g}" for v in FeedbackWeights().as_json().values())


def _weights(value: str) -> FeedbackWeights:
    try:
        sketch, confirmed, rejected = (float(v) for v in value.split(","))
        return FeedbackWeights(sketch, confirmed, rejected)
    except ValueError as exc:  # also UserInputError, a ValueError
        raise argparse.ArgumentTypeError(
            f"expected three weights SKETCH,CONFIRMED,REJECTED such as 1,1,0.25, got {value!r}"
            + (f" ({exc})" if isinstance(exc, UserInputError) else "")
        ) from None


def _rerank(args: argparse.Namespace) -> RerankParams | None:
    if not args.rerank:
        return None
    return RerankParams(args.k1, args.k2, args.lambda_value)


def _write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def _fmt(report: dict[str, Any]) -> str:
    def f(key: str) -> str:
        value = report[key]
        if isinstance(value, dict) and report.get("n_splits") == 1:
            return f"{key} {100 * value['mean']:.1f}%"
        if isinstance(value, dict):
            return f"{key} {100 * value['mean']:.1f}±{100 * value['std']:.1f}%"
        return f"{key} {100 * value:.1f}%"

    return ", ".join(f(k) for k in ("rank1", "rank5", "rank10", "mAP"))


def _runs(
    args: argparse.Namespace, dataset: PKUSketchDataset
) -> tuple[list[tuple[Bundle, Split]], dict[str, str]]:
    """The (bundle, split) pairs to evaluate and, with int8, each bundle's calibration."""
    int8 = args.precision == "int8"
    onnx = int8 or args.backend == "onnx"
    bundles = [
        load_bundle(path, precision="fp32" if onnx else args.precision) for path in args.model
    ]
    if args.test_ids == "heldout":
        runs = [(bundle, heldout_split(bundle, dataset)) for bundle in bundles]
    elif len(bundles) > 1:
        raise UserInputError(
            "several --model folders are evaluated on their own held-out identities only: "
            "add --test-ids heldout"
        )
    else:
        runs = [(bundles[0], split) for split in resolve_splits(args, dataset)]
    if not int8 and args.backend == "torch":
        return runs, {}
    from app.ml.bundle.onnx_runtime import onnxruntime_available
    from app.ml.evaluation.quantized import fp32_onnx_runs, int8_runs

    if not onnxruntime_available():
        raise UserInputError(
            "--precision int8 and --backend onnx need onnx and onnxruntime: pip install '.[onnx]'"
        )
    if not int8:
        if args.precision not in ("fp32", "auto"):
            raise UserInputError(
                f"--backend onnx runs fp32 or int8 graphs, not --precision {args.precision}"
            )
        return fp32_onnx_runs(runs, args.onnx_cache), {}
    runs, sources = int8_runs(
        runs,
        dataset,
        args.int8_cache,
        args.int8_images,
        args.int8_calibration,
        args.int8_float_ends,
    )
    for path, source in sources.items():
        print(f"int8 graphs of {path} calibrated on {source}", file=sys.stderr)
    return runs, sources


def _print_sizes(d: dict[str, Any]) -> None:
    print(
        f"with distractors ({d['used']} of {d['available']}: {d['seen_by_pretraining']} of "
        "identities the pre-training saw):"
    )
    for size, row in d["by_size"].items():
        for variant in ("plain", "rerank"):
            if variant in row:
                figures = ", ".join(
                    f"{k} {100 * row[variant][k]['mean']:.1f}%"
                    for k in ("rank1", "rank10", "rank100", "mAP")
                )
                print(f"{size:>8} {variant:>7}: {figures}")


def _print_feedback(feedback: dict[str, Any]) -> None:
    print("relevance feedback (the person's photos from the other camera):")
    for name, figures in feedback["variants"].items():
        print(f"{name:>24}: {_fmt(figures)}")


def run_evaluate(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.data_root)
    runs, calibration = _runs(args, dataset)
    if args.view is None and not args.no_translate and any(b.translator is None for b, _ in runs):
        print(
            "note: the bundle has no translator; evaluating untranslated sketches", file=sys.stderr
        )
    extras = Extras(
        feedback=(args.feedback_weights or FeedbackWeights()) if args.feedback else None,
        ranklist_dir=args.ranklist,
        translation_sheet=args.translation_sheet,
        sheet_people=args.sheet_people,
    )
    report = evaluate_runs(
        runs,
        dataset,
        view="sketch" if args.no_translate else args.view,
        rerank=_rerank(args),
        extras=extras,
        distractors=_distractors(args),
    )
    report["command"] = command_line(args)
    if calibration:
        report["int8_calibration"] = calibration
    overlap = sum(s["train_test_overlap"] for s in report["splits"])
    if overlap:
        print(
            f"warning: the bundle was trained on {overlap} of the test identities; these "
            "figures do not measure generalisation (use `sketchreid crossval`)",
            file=sys.stderr,
        )
    _write(args.json, report)
    if args.plot:
        cmc = report["cmc"]["mean"] if isinstance(report["cmc"], dict) else report["cmc"]
        plot_cmc({runs[0][0].name: cmc}, args.plot)
    print(_fmt(report))
    if "distractors" in report:
        _print_sizes(report["distractors"])
    if "feedback" in report:
        _print_feedback(report["feedback"])
    if args.ranklist:
        print(f"rank lists written to {args.ranklist}")
    if args.translation_sheet:
        print(f"translation sheet written to {args.translation_sheet}")
    return 0


def run_crossval(args: argparse.Namespace) -> int:
    dataset = load_dataset(args.data_root)
    args.test_ids = None
    args.split_file = None
    splits = resolve_splits(args, dataset)
    indices = list(range(len(splits)))
    if args.only_splits is not None:
        beyond = [i for i in args.only_splits if i >= len(splits)]
        if beyond:
            raise UserInputError(
                f"--only-splits {beyond[0]}: the draw has splits 0-{len(splits) - 1} (--splits)"
            )
        indices = args.only_splits
        splits = [splits[i] for i in indices]
    plan = plan_from_args(args, dataset, [])
    rerank = _rerank(args) or RerankParams()
    report = cross_validate(
        plan,
        splits,
        with_translator=args.translator,
        rerank=rerank,
        per_member=args.per_member,
        keep_bundles=args.keep_bundles,
        reuse=args.reuse,
        indices=indices,
        command=command_line(args),
        distractors=_distractors(args),
    )
    report["command"] = command_line(args)
    _write(args.json, report)
    if args.plot:
        curves = {name: v["cmc"]["mean"] for name, v in report["variants"].items()}
        plot_cmc(curves, args.plot)
    for name, variant in report["variants"].items():
        print(f"{name:>18}: {_fmt(variant)}")
    return 0
