"""Embedding speed and parity per backend and precision: PyTorch fp32 (the baseline), PyTorch
bf16 (autocast + channels-last), ONNX Runtime fp32 and ONNX Runtime int8 (static quantisation,
translator fp32), measured in the same run.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_inference.py                      # model_store/default
    .venv/bin/python benchmarks/bench_inference.py --model PATH         # another bundle
    .venv/bin/python benchmarks/bench_inference.py --synthetic          # random-weight bundle

Without a bundle folder (or with ``--synthetic``) a random-weight bundle is built (ResNet-20,
FC 256, CycleGAN generator ngf 32 / 6 blocks at 64x32). Inputs are synthetic people
(:func:`app.ml.data.synth.generate_synthetic`): their sketches are the queries, their photos
the gallery. Per row:

* one query: one search's embedding pass in the bundle's view (fused: the sketch and its
  translation together, each with its mirror image under flip TTA; four network images), median
  of ``--repeats`` calls after a warm-up;
* batch: ``--batch`` gallery crops in one call, median of 3 calls -> ms and crops/s;
* the backends take turns call by call (round-robin), so a busy machine slows them alike;
  beside the wall time, the process CPU time of the call (less sensitive to other jobs);
* parity with PyTorch fp32 over every query and gallery embedding: the lowest cosine, and how
  many queries keep the same top-10 gallery items (as a set, and in the same order);
* translator (when the bundle has one): one sketch, median ms, and the largest difference of
  the uint8 output from fp32 in grey levels;
* int8 is calibrated on ``--int8-images`` other synthetic people (seed 1), never on the
  measured ones (``--float-ends``: also int8 with the first convolution and the embedding
  layer in float, same calibration); the speed ratios to PyTorch fp32 and ONNX Runtime fp32
  close the report.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.ml.bundle.store import Bundle, load_bundle, save_bundle  # noqa: E402
from app.ml.data.synth import generate_synthetic  # noqa: E402
from app.ml.infer.embedder import Modality  # noqa: E402
from app.ml.infer.precision import cpu_has_bf16  # noqa: E402
from app.ml.models.cyclegan import GeneratorSpec, build_generator  # noqa: E402
from app.ml.models.resnet_cifar import MemberSpec, build_member  # noqa: E402
from app.ml.transforms import image_to_uint8, to_uint8_batch  # noqa: E402

DEFAULT_MODEL = ROOT / "model_store" / "default"


def build_bundle(out: Path) -> Path:
    torch.manual_seed(0)
    spec = MemberSpec(arch="resnet20", num_classes=100, fc_dim=256, input_size=(64, 32))
    gen = GeneratorSpec(ngf=32, n_blocks=6, input_size=(64, 32))
    save_bundle(
        out,
        name="bench-synthetic",
        version="0",
        members=[("m0", spec, build_member(spec).eval(), {})],
        translator=(gen, build_generator(gen).eval(), {}),
    )
    return out


def interleaved_ms(
    calls: dict[str, Callable[[], object]], repeats: int
) -> dict[str, tuple[float, float]]:
    """Median wall and CPU milliseconds per call, the calls taking turns (round-robin) so
    that every backend meets the same background load."""
    for fn in calls.values():
        fn()  # warm-up
    wall: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            cpu[name].append((time.process_time() - c) * 1000)
            wall[name].append((time.perf_counter() - w) * 1000)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in calls}


def top10(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    return np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :10]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="bundle folder")
    parser.add_argument("--synthetic", action="store_true", help="use a random-weight bundle")
    parser.add_argument("--identities", type=int, default=100, help="synthetic people")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20, help="one-query calls to time")
    parser.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime")
    parser.add_argument("--no-int8", action="store_true", help="skip ONNX Runtime int8")
    parser.add_argument("--int8-images", type=int, default=64, help="int8 calibration people")
    parser.add_argument(
        "--float-ends",
        action="store_true",
        help="also int8 with the first convolution and the embedding layer in float",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        tmp_path = Path(tmp)
        synthetic = args.synthetic or not (args.model / "manifest.json").is_file()
        model = build_bundle(tmp_path / "model") if synthetic else args.model
        generate_synthetic(tmp_path / "people", args.identities, seed=0)
        photos = [Image.open(p) for p in sorted((tmp_path / "people" / "photo").glob("*.jpg"))]
        sketches = [Image.open(p) for p in sorted((tmp_path / "people" / "sketch").glob("*"))]

        backends: dict[str, Bundle] = {
            "torch fp32": load_bundle(model, precision="fp32"),
            "torch bf16": load_bundle(model, precision="bf16"),
        }
        if not args.no_onnx:
            from app.ml.bundle.onnx_export import export_onnx
            from app.ml.bundle.onnx_parity import with_onnx

            start = time.perf_counter()
            export_onnx(backends["torch fp32"], tmp_path / "onnx")
            export_s = time.perf_counter() - start
            backends["onnx fp32"] = with_onnx(backends["torch fp32"], tmp_path / "onnx")
            if not args.no_int8:
                from app.ml.bundle.onnx_quantize import quantize_onnx
                from app.ml.data.calibration import synthetic_calibration

                cal = synthetic_calibration(args.int8_images, seed=1)
                start = time.perf_counter()
                quantize_onnx(
                    backends["torch fp32"],
                    tmp_path / "onnx",
                    tmp_path / "int8",
                    cal.photos,
                    cal.sketches,
                    source=cal.source,
                )
                export_s += time.perf_counter() - start
                backends["onnx int8"] = with_onnx(backends["torch fp32"], tmp_path / "int8")
                if args.float_ends:  # the same calibration, first and last layers float
                    quantize_onnx(
                        backends["torch fp32"],
                        tmp_path / "onnx",
                        tmp_path / "int8-ends",
                        cal.photos,
                        cal.sketches,
                        source=cal.source,
                        float_ends=True,
                    )
                    backends["onnx int8 float ends"] = with_onnx(
                        backends["torch fp32"], tmp_path / "int8-ends"
                    )
        base = backends["torch fp32"]
        m = base.manifest
        print(
            f"model {m.name} {m.version}{' (random weights)' if synthetic else ''}: "
            f"{len(m.members)} member(s) {[e.spec.arch for e in m.members]}, dim "
            f"{base.embedder.dim}, translator {base.translator is not None}; torch threads "
            f"{torch.get_num_threads()}; CPU bf16 units {cpu_has_bf16()}; "
            f"{len(sketches)} queries, {len(photos)} gallery crops"
            + ("" if args.no_onnx else f"; ONNX export (and int8 quantisation) {export_s:.1f} s")
        )

        size = m.input_size
        # One search's pass in the bundle's view (app.ml.infer.query_views): the sketch, its
        # translation, or both together (fused), each with its mirror image under flip TTA.
        view = base.view
        query_images: list[Image.Image] = [sketches[0]]
        query_kinds: list[Modality] = ["sketch"]
        if view != "sketch" and base.translator is not None:
            translation = base.translator.translate(sketches[0])
            query_images = [translation] if view == "translated" else [sketches[0], translation]
            query_kinds = ["photo"] if view == "translated" else ["sketch", "photo"]
        one = base.embedder.to_uint8(query_images, query_kinds)
        sketch = image_to_uint8(sketches[0], size, grey=True).unsqueeze(0)
        batch = to_uint8_batch((photos * (args.batch // len(photos) + 1))[: args.batch], size)
        ref_q = base.embedder.embed(sketches, "sketch")
        ref_g = base.embedder.embed(photos)
        ref_top = top10(ref_q, ref_g)
        scores = np.sort(ref_q @ ref_g.T, axis=1)[:, ::-1]
        gaps = scores[:, 9] - scores[:, 10]
        embedders = {name: b.embedder for name, b in backends.items()}
        one_ms = interleaved_ms(
            {k: (lambda e=e: e.embed_array(one)) for k, e in embedders.items()}, args.repeats
        )
        batch_ms = interleaved_ms(
            {k: (lambda e=e: e.embed_tensor(batch)) for k, e in embedders.items()}, 3
        )
        translate_ms: dict[str, tuple[float, float]] = {}
        if base.translator is not None:
            translators = {k: b.translator for k, b in backends.items() if b.translator}
            translate_ms = interleaved_ms(
                {k: (lambda t=t: t.translate_tensor(sketch)) for k, t in translators.items()},
                args.repeats,
            )
        rows = []
        for name, bundle in backends.items():
            emb = bundle.embedder
            q, g = emb.embed(sketches, "sketch"), emb.embed(photos)
            cos = min(float((q * ref_q).sum(1).min()), float((g * ref_g).sum(1).min()))
            top = top10(q, g)
            same_set = sum(set(a) == set(b) for a, b in zip(top, ref_top, strict=True))
            same_order = int((top == ref_top).all(axis=1).sum())
            row: list[object] = [
                name,
                *one_ms[name],
                *batch_ms[name],
                args.batch / batch_ms[name][0] * 1000,
                cos,
                same_set,
                same_order,
            ]
            if name in translate_ms and base.translator is not None and bundle.translator:
                ref_img = base.translator.translate_tensor(sketch).int()
                diff = (bundle.translator.translate_tensor(sketch).int() - ref_img).abs().max()
                row += [*translate_ms[name], int(diff)]
            rows.append(row)

    n = len(ref_top)
    print(
        f"\n10th-11th score gap of the fp32 rankings: min {gaps.min():.5f}, median "
        f"{np.median(gaps):.5f} (a top-10 set changes when an error exceeds this gap)\n"
    )
    head = (
        "| backend | 1 query ms (CPU ms) | batch ms (CPU ms) | crops/s | min cosine "
        "| same top-10 set | same order |"
    )
    if base.translator is not None:
        head += " translate ms (CPU ms) | max level diff |"
    print(head)
    print("|" + "---|" * head.count(" |"))
    for r in rows:
        cells = (
            f"| {r[0]} | {r[1]:.1f} ({r[2]:.1f}) | {r[3]:.0f} ({r[4]:.0f}) | {r[5]:.0f} | "
            f"{r[6]:.6f} | {r[7]}/{n} | {r[8]}/{n} |"
        )
        if len(r) > 9:
            cells += f" {r[9]:.1f} ({r[10]:.1f}) | {r[11]} |"
        print(cells)
    flips = " + their mirror images (flip TTA)" if m.tta_flip else ""
    print(
        f"\nbatch = {args.batch} crops; 1 query = the bundle's {view} view in one pass: "
        f"{' + '.join(query_kinds)}{flips}"
    )
    print("\nspeed ratios (wall time, higher is faster; CPU time in brackets):")
    by_name = {r[0]: r for r in rows}
    for r in rows:
        bases = ["torch fp32"] + (["onnx fp32"] if str(r[0]).startswith("onnx int8") else [])
        for base_name in bases:
            b = by_name.get(base_name)
            if b is None or b is r:
                continue
            print(
                f"  {r[0]} vs {base_name}: 1 query {b[1] / r[1]:.2f}x ({b[2] / r[2]:.2f}x), "
                f"batch {b[3] / r[3]:.2f}x ({b[4] / r[4]:.2f}x)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
