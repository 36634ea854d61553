"""bf16 inference in the one embedding path: the precision setting reaches the networks, and
bf16 agrees with fp32 on a fixed synthetic gallery (cosine >= 0.9999, the same top-10).

The trained shipped bundle does not meet this bar (docs/results.md, "Inference speed"), so
the service runs fp32 unless told otherwise; `benchmarks/bench_inference.py` measures it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.core.config import load_settings
from app.errors import SketchReidError
from app.ml.bundle.store import Bundle, load_bundle, save_bundle
from app.ml.data.synth import generate_synthetic
from app.ml.infer.precision import cpu_has_bf16
from app.ml.infer.torch_embedder import Embedder, Translator
from app.ml.models.cyclegan import GeneratorSpec, build_generator
from app.ml.models.resnet_cifar import MemberSpec, build_member

torch.set_num_threads(1)

SPEC_A = MemberSpec(arch="resnet8", num_classes=5, fc_dim=16)
SPEC_B = MemberSpec(arch="resnet8", num_classes=5, fc_dim=24, spp=True, bn_neck=True)
GEN_SPEC = GeneratorSpec(ngf=4, n_blocks=1, input_size=(64, 32))


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("precision") / "b"
    save_bundle(
        out,
        name="p",
        version="1",
        members=[
            ("a", SPEC_A, build_member(SPEC_A).eval(), {}),
            ("b", SPEC_B, build_member(SPEC_B).eval(), {}),
        ],
        translator=(GEN_SPEC, build_generator(GEN_SPEC).eval(), {}),
    )
    return out


@pytest.fixture(scope="module")
def gallery(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[Image.Image], list[Image.Image]]:
    """24 synthetic people: their sketches (queries) and 48 photos (gallery), seed 3."""
    root = tmp_path_factory.mktemp("gallery")
    generate_synthetic(root, 24, seed=3)
    photos = [Image.open(p) for p in sorted((root / "photo").glob("*.jpg"))]
    sketches = [Image.open(p) for p in sorted((root / "sketch").glob("*.jpg"))]
    return sketches, photos


def _top10(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Each query's 10 best gallery items as a sorted set (order within the 10 aside)."""
    return np.sort(np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :10], axis=1)


def test_bf16_agrees_with_fp32_on_a_fixed_gallery(
    bundle_dir: Path, gallery: tuple[list[Image.Image], list[Image.Image]]
) -> None:
    sketches, photos = gallery
    fp32 = load_bundle(bundle_dir, precision="fp32")
    bf16 = load_bundle(bundle_dir, precision="bf16")
    assert (fp32.embedder.precision, bf16.embedder.precision) == ("fp32", "bf16")
    assert bf16.inference == {"backend": "torch", "precision": "bf16"}
    out = {}
    for name, b in (("fp32", fp32), ("bf16", bf16)):
        out[name] = (b.embedder.embed(sketches, "sketch"), b.embedder.embed(photos))
    cosines = np.concatenate([(out["fp32"][i] * out["bf16"][i]).sum(1) for i in (0, 1)])
    assert cosines.min() >= 0.9999
    assert not np.array_equal(out["fp32"][1], out["bf16"][1])  # bf16 really ran
    np.testing.assert_array_equal(_top10(*out["bf16"]), _top10(*out["fp32"]))


def test_auto_follows_the_hardware(bundle_dir: Path) -> None:
    auto = load_bundle(bundle_dir, precision="auto")
    assert auto.embedder.precision == ("bf16" if cpu_has_bf16() else "fp32")
    assert load_bundle(bundle_dir).embedder.precision == "fp32"  # the default


def test_translator_runs_bf16_close_to_fp32(bundle_dir: Path) -> None:
    fp32, bf16 = load_bundle(bundle_dir), load_bundle(bundle_dir, precision="bf16")
    assert isinstance(bf16.translator, Translator) and bf16.translator.precision == "bf16"
    assert fp32.translator is not None
    x = torch.rand((2, 3, 64, 32)) * 2 - 1
    a, b = fp32.translator.generate(x), bf16.translator.generate(x)
    assert a.dtype == b.dtype == torch.float32
    assert not torch.equal(a, b) and float((a - b).abs().max()) < 0.05


def test_training_models_keep_their_mode_under_bf16() -> None:
    model = build_member(SPEC_A).train()
    embedder = Embedder([model], (64, 32), device=None, precision="bf16")
    out = embedder.embed_tensor(torch.zeros((2, 3, 64, 32), dtype=torch.uint8))
    assert out.dtype == torch.float32 and model.training


def test_bad_precision_is_refused(bundle_dir: Path) -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        load_bundle(bundle_dir, precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(SketchReidError, match="PRECISION"):
        load_settings(PRECISION="fp16")
    with pytest.raises(SketchReidError, match="BACKEND=onnx runs in fp32"):
        load_settings(PRECISION="bf16", BACKEND="onnx")
    with pytest.raises(SketchReidError, match="BACKEND"):
        load_settings(BACKEND="tensorrt")


def test_bundle_reports_how_it_runs(bundle_dir: Path) -> None:
    bundle: Bundle = load_bundle(bundle_dir)
    assert bundle.inference == {"backend": "torch", "precision": "fp32"}
    assert bundle.generator is not None and bundle.translator is not None
