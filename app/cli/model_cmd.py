"""`sketchreid model info|verify|annotate|prepare BUNDLE`, `model export-onnx BUNDLE OUT`,
`model quantize BUNDLE OUT`, `model combine OUT BUNDLE...`: inspect, check, annotate, prepare
for serving, export, quantise and combine model bundles. ``info``, ``annotate`` and a
``verify`` of a bundle's prepared ONNX files run without PyTorch; the rest need it."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from app.cli.common import command_line, positive_int
from app.errors import UserInputError
from app.ml.bundle.manifest import Manifest, read_manifest, update_manifest
from app.ml.bundle.onnx_files import CALIBRATIONS
from app.ml.data.calibration import DEFAULT_CALIBRATION_IMAGES
from app.ml.infer.query_views import QUERY_VIEWS, bundle_view

_FIGURES = ("rank1", "rank5", "rank10", "mAP")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("model", help="inspect and verify model bundles")
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    info = sub.add_parser("info", help="print a summary of a bundle's manifest")
    info.add_argument("bundle", metavar="BUNDLE", help="bundle folder")
    info.set_defaults(func=cmd_info)

    verify = sub.add_parser(
        "verify",
        help="check checksums and load every network (without PyTorch: check the weights' "
        "checksums and load the bundle's prepared ONNX files)",
    )
    verify.add_argument("bundle", metavar="BUNDLE", help="bundle folder")
    verify.set_defaults(func=cmd_verify)

    prepare = sub.add_parser(
        "prepare",
        help="write the ONNX files the service runs into BUNDLE/onnx/fp32 (and, with --int8, "
        "BUNDLE/onnx/int8), checked against PyTorch, and record their sha256 in the manifest: "
        "the service then starts from them without exporting and without PyTorch",
    )
    prepare.add_argument("bundle", metavar="BUNDLE", help="bundle folder")
    prepare.add_argument(
        "--int8",
        action="store_true",
        help="also quantise the members to int8 (as `model quantize`; PRECISION=int8 serves "
        "them); without it, prepared int8 files are removed",
    )
    prepare.add_argument(
        "--calibration-root",
        type=Path,
        metavar="DIR",
        help="--int8: calibrate on the photos and sketches of this PKU-Sketch-layout folder "
        "(default: synthetic people)",
    )
    prepare.add_argument(
        "--images",
        type=positive_int,
        default=DEFAULT_CALIBRATION_IMAGES,
        metavar="N",
        help=f"--int8: at most N photos and N sketches (default {DEFAULT_CALIBRATION_IMAGES})",
    )
    prepare.add_argument(
        "--calibration",
        choices=CALIBRATIONS,
        default="minmax",
        help="--int8: how activation ranges are chosen (default minmax; percentile, entropy)",
    )
    prepare.add_argument(
        "--float-ends",
        action="store_true",
        help="--int8: keep the first convolution and the embedding layer in float "
        "(a little slower; closer to fp32)",
    )
    prepare.set_defaults(func=cmd_prepare)

    export = sub.add_parser(
        "export-onnx",
        help="export the members (and translator) to ONNX, checked for parity with PyTorch",
    )
    export.add_argument("bundle", metavar="BUNDLE", help="bundle folder")
    export.add_argument("out", metavar="OUT", type=Path, help="new folder for the .onnx files")
    export.set_defaults(func=cmd_export_onnx)

    quantize = sub.add_parser(
        "quantize",
        help="write int8 ONNX graphs of the members (ONNX Runtime static quantisation, "
        "calibrated on real photos and sketches; the translator stays fp32), checked against "
        "PyTorch fp32",
    )
    quantize.add_argument("bundle", metavar="BUNDLE", help="bundle folder")
    quantize.add_argument("out", metavar="OUT", type=Path, help="new folder for the int8 files")
    quantize.add_argument(
        "--calibration-root",
        type=Path,
        metavar="DIR",
        help="calibrate on the photos and sketches of this PKU-Sketch-layout folder (default: "
        "synthetic people from the generator). Use identities the model will not be evaluated "
        "on: its training identities or new ones",
    )
    quantize.add_argument(
        "--images",
        type=positive_int,
        default=DEFAULT_CALIBRATION_IMAGES,
        metavar="N",
        help="at most N photos and N sketches (seeded draw; synthetic: N people) "
        f"(default {DEFAULT_CALIBRATION_IMAGES})",
    )
    quantize.add_argument(
        "--calibration",
        choices=CALIBRATIONS,
        default="minmax",
        help="how activation ranges are chosen from the images (default minmax; percentile: "
        "the 99.999th percentile; entropy: the KL-optimal threshold)",
    )
    quantize.add_argument(
        "--float-ends",
        action="store_true",
        help="keep the first convolution and the embedding layer in float "
        "(a little slower; closer to fp32)",
    )
    quantize.add_argument(
        "--onnx",
        type=Path,
        metavar="DIR",
        help="an fp32 export of BUNDLE (`model export-onnx`) to quantise (default: export "
        "one into a temporary folder)",
    )
    quantize.set_defaults(func=cmd_quantize)

    combine = sub.add_parser(
        "combine",
        help="write one ensemble bundle from the members of several bundles trained on the "
        "same identities (e.g. members with different heads, trained in separate runs)",
    )
    combine.add_argument("out", metavar="OUT", type=Path, help="new bundle folder")
    combine.add_argument("bundles", metavar="BUNDLE", nargs="+", help="bundles to combine (2+)")
    combine.add_argument("--name", help="bundle name (default: the parts' names joined by +)")
    combine.add_argument("--version", help="bundle version (default: the parts' joined by +)")
    combine.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    combine.add_argument(
        "--translator-from",
        metavar="BUNDLE",
        help="carry this bundle's sketch->photo translator over (trained on the same "
        "identities as the members, else refused)",
    )
    combine.set_defaults(func=cmd_combine)

    annotate = sub.add_parser(
        "annotate",
        help="record evaluation figures (crossval / evaluate JSON reports), name, version and "
        "notes in a bundle's manifest; weights and checksums are untouched",
    )
    annotate.add_argument("bundle", metavar="BUNDLE", help="bundle folder")
    annotate.add_argument("--name", help="new bundle name")
    annotate.add_argument("--version", help="new bundle version")
    annotate.add_argument(
        "--crossval",
        action="append",
        default=[],
        metavar="LABEL=JSON",
        help="a `sketchreid crossval` report to record under evaluation.crossval.LABEL "
        "(repeat; reports already recorded under other labels are kept, one under the same "
        "label is replaced)",
    )
    annotate.add_argument(
        "--drop-crossval",
        action="append",
        default=[],
        metavar="LABEL",
        help="remove the cross-validation report recorded under LABEL (repeat)",
    )
    annotate.add_argument(
        "--fit",
        type=Path,
        metavar="JSON",
        help="a `sketchreid evaluate` report on the bundle's own training identities",
    )
    annotate.add_argument(
        "--note", action="append", default=None, help="replace the notes (repeat for several)"
    )
    annotate.add_argument(
        "--query-view",
        choices=QUERY_VIEWS,
        help="how the service embeds a query sketch unless a search says otherwise: as drawn, "
        "its translation, or both fused (translated and fused need the bundle's translator)",
    )
    annotate.add_argument(
        "--translation-weight",
        type=float,
        metavar="W",
        help="the translation's weight in a fused query, between 0 and 1 exclusive (the "
        "sketch's is 1 - W; default 0.5)",
    )
    annotate.add_argument(
        "--photo-flip",
        choices=("on", "off"),
        help="flip test-time augmentation for photos (gallery crops, a query's translation); "
        "sketches keep the bundle's flip TTA. Changes the embedding key: a service re-embeds "
        "its gallery with the new rule",
    )
    annotate.add_argument(
        "--member-weights",
        metavar="W1,W2,...",
        help="each member's share of the ensemble's cosine, in the manifest's member order "
        "(positive, normalised to sum 1), or 'equal'. Changes the embedding key: a service "
        "re-embeds its gallery with the new weights",
    )
    annotate.set_defaults(func=cmd_annotate)

    center = sub.add_parser(
        "center",
        help="modality centering: store each member's mean photo and sketch embedding over the "
        "bundle's training identities (manifest training.train_pids) in the manifest; the "
        "service then subtracts the mean of an image's kind before combining members. Changes "
        "the embedding key: a service re-embeds its gallery",
    )
    center.add_argument("bundle", metavar="BUNDLE", help="bundle folder")
    center.add_argument(
        "--data-root",
        type=Path,
        metavar="DIR",
        help="the PKU-Sketch-layout folder the bundle was trained on (required unless --off)",
    )
    center.add_argument("--off", action="store_true", help="remove the bundle's centering instead")
    center.set_defaults(func=cmd_center)


def _member_weights(text: str, members: int) -> list[float] | None:
    """``--member-weights``: 'equal' (None) or one positive number a member."""
    if text.strip().lower() == "equal":
        return None
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise UserInputError(
            f"--member-weights takes comma-separated numbers or 'equal', got {text!r}"
        ) from None
    if len(weights) != members:
        raise UserInputError(
            f"--member-weights has {len(weights)} values for {members} members "
            "(one a member, in the manifest's order)"
        )
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise UserInputError(f"--member-weights must all be positive, got {text!r}")
    return weights


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def format_manifest(manifest: Manifest) -> str:
    """A readable multi-line summary of ``manifest``."""
    h, w = manifest.input_size
    lines = [
        f"bundle      {manifest.name} {manifest.version} (format {manifest.format_version})",
        f"created     {manifest.created_at}",
        f"input       {h}x{w} (HxW), sketch grey: {manifest.sketch_grey}, "
        f"flip TTA: {manifest.tta_flip}"
        + (
            f" (photos: {manifest.photo_tta_flip})"
            if manifest.photo_tta_flip not in (None, manifest.tta_flip)
            else ""
        )
        + f", combine: {manifest.combine}",
        f"members     {len(manifest.members)}",
    ]
    dim = 0
    shares = manifest.shares()
    for i, m in enumerate(manifest.members):
        s = m.spec
        dim += s.fc_dim
        pool = "spp" if s.spp else "gap"
        neck = ", bn-neck" if s.bn_neck else ""
        share = f", weight {shares[i]:.3g}" if shares is not None else ""
        lines.append(
            f"  - {m.name}: {s.arch} {pool}, fc {s.fc_dim}{neck}, {s.num_classes} classes, "
            f"{m.parameters / 1e6:.3f} M params ({m.embedding_parameters / 1e6:.3f} M embedding)"
            + share
        )
    lines.append(f"embedding   {dim} dims")
    t = manifest.translator
    if t is None:
        lines.append("translator  none")
    else:
        th, tw = t.spec.input_size
        lines.append(
            f"translator  resnet generator ngf {t.spec.ngf}, {t.spec.n_blocks} blocks, "
            f"{t.spec.norm} norm, {th}x{tw}, {t.parameters / 1e6:.3f} M params"
        )
    view = bundle_view(manifest.query_view, t is not None)
    lines.append(
        f"query view  {view}"
        + ("" if manifest.query_view else " (default)")
        + (f", translation weight {manifest.translation_weight:g}" if view == "fused" else "")
    )
    c = manifest.centering
    lines.append(
        "centering   "
        + (f"modality means of {c.identities} identities ({c.source})" if c else "none")
    )
    prepared = ", ".join(f"onnx/{p}" for p in sorted(manifest.onnx))
    lines.append(f"prepared    {prepared or 'none (the service exports at start: model prepare)'}")
    if manifest.evaluation:
        lines.append("evaluation")
        lines += [f"  {k}: {_fmt_value(v)}" for k, v in sorted(manifest.evaluation.items())]
    else:
        lines.append("evaluation  none recorded")
    lines += [f"note        {note}" for note in manifest.notes]
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    print(format_manifest(read_manifest(args.bundle)))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from app.ml.bundle.prepared import load_prepared

    manifest = read_manifest(args.bundle)
    for precision in sorted(manifest.onnx):
        served = load_prepared(args.bundle, precision)  # type: ignore[arg-type]
        assert served is not None
        print(f"OK prepared {precision} ONNX files: checksums verified, sessions load")
    try:
        from app.ml.bundle.store import load_bundle
    except ModuleNotFoundError as exc:
        if exc.name not in ("torch", "torchvision") or not manifest.onnx:
            raise
        print("PyTorch is not installed: the .pt weights were checked by sha256, not loaded")
        return 0
    bundle = load_bundle(args.bundle)
    translator = "with translator" if bundle.translator is not None else "no translator"
    print(
        f"OK {bundle.name} {bundle.version}: {len(bundle.members)} member(s), "
        f"{bundle.embedder.dim}-d embedding, {translator}; checksums and architectures verified"
    )
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from app.ml.bundle.onnx_export import export_onnx
    from app.ml.bundle.onnx_files import OnnxPrecision
    from app.ml.bundle.onnx_quantize import quantize_onnx
    from app.ml.bundle.onnx_runtime import onnxruntime_available
    from app.ml.bundle.prepared import prepared_dir, record_prepared
    from app.ml.bundle.store import load_bundle
    from app.ml.data.calibration import calibration_images

    if not onnxruntime_available():
        raise UserInputError("prepare needs onnx and onnxruntime: pip install 'sketch-reid[onnx]'")
    bundle = load_bundle(args.bundle)
    fp32_dir = prepared_dir(args.bundle, "fp32")
    record = export_onnx(bundle, fp32_dir, overwrite=True)
    parity = ", ".join(f"{k} {v:.1e}" for k, v in sorted(record.parity.items()))
    print(f"wrote {fp32_dir} (fp32; parity with PyTorch: {parity})")
    precisions: list[OnnxPrecision] = ["fp32"]
    if args.int8:
        images = calibration_images(args.calibration_root, args.images)
        int8_dir = prepared_dir(args.bundle, "int8")
        record = quantize_onnx(
            bundle,
            fp32_dir,
            int8_dir,
            images.photos,
            images.sketches,
            source=images.source,
            overwrite=True,
            calibration=args.calibration,
            float_ends=args.float_ends,
        )
        ends = ", first and last layers float" if args.float_ends else ""
        print(
            f"wrote {int8_dir} (int8{ends}, {args.calibration} calibration on {images.source}; "
            "lowest cosine to "
            f"PyTorch fp32 {record.parity['embedding_min_cosine']:.4f})"
        )
        precisions.append("int8")
    manifest = record_prepared(args.bundle, precisions)
    digests = ", ".join(f"{k} {v[:12]}…" for k, v in sorted(manifest.onnx.items()))
    print(f"recorded in {Path(args.bundle) / 'manifest.json'}: onnx {digests}")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from app.ml.bundle.onnx_export import export_onnx
    from app.ml.bundle.onnx_runtime import onnxruntime_available
    from app.ml.bundle.store import load_bundle

    if not onnxruntime_available():
        raise UserInputError(
            "export-onnx needs onnx and onnxruntime: pip install 'sketch-reid[onnx]'"
        )
    bundle = load_bundle(args.bundle)
    record = export_onnx(bundle, args.out)
    files = [m.file for m in record.members] + (
        [record.translator.file] if record.translator else []
    )
    parity = ", ".join(f"{k} {v:.1e}" for k, v in sorted(record.parity.items()))
    print(
        f"exported {', '.join(files)} to {args.out} (opset {record.opset}); "
        f"parity with PyTorch: {parity}"
    )
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from app.ml.bundle.onnx_quantize import quantize_bundle
    from app.ml.bundle.onnx_runtime import onnxruntime_available
    from app.ml.bundle.store import load_bundle
    from app.ml.data.calibration import calibration_images

    if not onnxruntime_available():
        raise UserInputError("quantize needs onnx and onnxruntime: pip install 'sketch-reid[onnx]'")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UserInputError(f"{args.out} already exists; choose another folder")
    bundle = load_bundle(args.bundle)
    images = calibration_images(args.calibration_root, args.images)
    record = quantize_bundle(
        bundle,
        args.out,
        images.photos,
        images.sketches,
        source=images.source,
        fp32_dir=args.onnx,
        calibration=args.calibration,
        float_ends=args.float_ends,
    )
    q = record.quantization
    assert q is not None
    print(
        f"wrote int8 {', '.join(m.file for m in record.members)} to {args.out} "
        f"({q.quant_format}, {q.activation_type} activations, {q.weight_type} per-channel "
        f"weights{', 7-bit' if q.reduce_range else ''}"
        f"{'; first and last layers float' if q.float_ends else ''}; translator fp32), "
        f"{q.calibrate_method} calibration on "
        f"{images.source}; lowest cosine to PyTorch fp32 "
        f"{record.parity['embedding_min_cosine']:.4f}"
    )
    return 0


def cmd_center(args: argparse.Namespace) -> int:
    from app.ml.bundle.store import load_bundle
    from app.ml.data.pku import load_pku_sketch
    from app.ml.evaluation.centering import modality_means

    if args.off:
        if args.data_root is not None:
            raise UserInputError("--off takes no --data-root")
        update_manifest(args.bundle, centering=None)
        print(f"{args.bundle}: no modality centering")
        return 0
    if args.data_root is None:
        raise UserInputError("model center needs --data-root (or --off)")
    bundle = load_bundle(args.bundle)
    trained = bundle.manifest.training.get("train_pids")
    if not isinstance(trained, list) or not trained:
        raise UserInputError(
            f"{args.bundle} does not record its training identities (manifest "
            "training.train_pids): the means must come from people it was trained on"
        )
    centering = modality_means(bundle, load_pku_sketch(args.data_root), [int(p) for p in trained])
    update_manifest(args.bundle, centering=centering)
    print(
        f"{args.bundle}: modality centering from {centering.photos} photos and "
        f"{centering.sketches} sketches of {centering.identities} identities"
    )
    return 0


def cmd_combine(args: argparse.Namespace) -> int:
    from app.ml.bundle.combine import combine_to_folder

    manifest = combine_to_folder(
        args.bundles,
        args.out,
        name=args.name,
        version=args.version,
        command=command_line(args),
        overwrite=args.overwrite,
        translator_from=args.translator_from,
    )
    members = ", ".join(m.name for m in manifest.members)
    print(f"wrote {args.out}: {manifest.name} {manifest.version}, members {members}")
    return 0


def _read_report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{path}: cannot read a JSON report ({exc})") from exc
    if not isinstance(report, dict):
        raise UserInputError(f"{path}: not a JSON object")
    return report


def crossval_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The part of a `sketchreid crossval` report a manifest keeps: command, protocol,
    members, and each variant's mean ± std (fractions, 4 decimals)."""
    if "variants" not in report or "protocol" not in report:
        raise UserInputError("not a `sketchreid crossval` report (no variants/protocol)")
    variants = {
        name: {k: {"mean": round(v[k]["mean"], 4), "std": round(v[k]["std"], 4)} for k in _FIGURES}
        for name, v in report["variants"].items()
    }
    return {
        "command": report.get("command", ""),
        "archs": report.get("archs"),
        "reused": report.get("reused") or [],
        "protocol": report["protocol"],
        "train_seconds_mean": report.get("train_seconds_mean"),
        "variants": variants,
    }


def fit_summary(report: dict[str, Any]) -> dict[str, Any]:
    if "rank1" not in report or "n_queries" not in report:
        raise UserInputError("not a single-split `sketchreid evaluate` report")
    out: dict[str, Any] = {k: round(float(report[k]), 4) for k in _FIGURES}
    out.update(
        command=report.get("command", ""),
        n_queries=report["n_queries"],
        n_gallery=report["n_gallery"],
        translated=report.get("translated"),
        reranked=report.get("reranked"),
    )
    return out


def cmd_annotate(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.bundle)
    evaluation = dict(manifest.evaluation)
    if args.crossval or args.drop_crossval:
        recorded = dict(evaluation.get("crossval") or {})
        for label in args.drop_crossval:
            if label not in recorded:
                known = ", ".join(sorted(recorded)) or "none"
                raise UserInputError(f"no cross-validation report {label!r} (recorded: {known})")
            del recorded[label]
        for item in args.crossval:
            label, sep, path = item.partition("=")
            if not sep or not label or not path:
                raise UserInputError(f"--crossval wants LABEL=JSON, got {item!r}")
            recorded[label] = crossval_summary(_read_report(Path(path)))
        evaluation["crossval"] = recorded
    if args.fit:
        evaluation["fit_check"] = fit_summary(_read_report(args.fit))
    fields: dict[str, Any] = {"evaluation": evaluation}
    if args.name:
        fields["name"] = args.name
    if args.version:
        fields["version"] = args.version
    if args.note is not None:
        fields["notes"] = args.note
    if args.query_view is not None:
        if args.query_view != "sketch" and manifest.translator is None:
            raise UserInputError(
                f"--query-view {args.query_view} needs a translator and {args.bundle} has none "
                "(`sketchreid train translator` adds one)"
            )
        fields["query_view"] = args.query_view
    if args.translation_weight is not None:
        if not 0.0 < args.translation_weight < 1.0:
            raise UserInputError(
                f"--translation-weight must be between 0 and 1 (exclusive), "
                f"got {args.translation_weight}"
            )
        fields["translation_weight"] = args.translation_weight
    if args.photo_flip is not None:
        fields["photo_tta_flip"] = args.photo_flip == "on"
    if args.member_weights is not None:
        fields["member_weights"] = _member_weights(args.member_weights, len(manifest.members))
    updated = update_manifest(args.bundle, **fields)
    print(f"annotated {args.bundle}: {updated.name} {updated.version}")
    return 0
