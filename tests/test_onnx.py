"""ONNX export and ONNX Runtime inference: parity with PyTorch, the shared interface, and the
checks that tie an export to the bundle it came from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli.main import main
from app.errors import BundleError
from app.ml.bundle.onnx_export import export_onnx
from app.ml.bundle.onnx_files import ONNX_MANIFEST, read_onnx_manifest
from app.ml.bundle.onnx_parity import with_onnx
from app.ml.bundle.onnx_runtime import OnnxEmbedder, OnnxTranslator
from app.ml.bundle.store import Bundle, load_bundle, save_bundle
from app.ml.data.synth import generate_synthetic
from app.ml.infer.embedder import BaseEmbedder, BaseTranslator
from app.ml.models.cyclegan import GeneratorSpec, build_generator
from app.ml.models.resnet_cifar import MemberSpec, build_member

torch.set_num_threads(1)

SPEC_A = MemberSpec(arch="resnet8", num_classes=5, fc_dim=16)
SPEC_B = MemberSpec(arch="resnet8", num_classes=5, fc_dim=24, spp=True, bn_neck=True)
GEN_SPEC = GeneratorSpec(ngf=4, n_blocks=1, input_size=(64, 32))


def _randomise_bn(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _save(out: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_bundle(
        out,
        name="onnx-test",
        version=str(seed),
        members=[
            ("a", SPEC_A, _randomise_bn(build_member(SPEC_A)), {}),
            ("b", SPEC_B, _randomise_bn(build_member(SPEC_B)), {}),
        ],
        translator=(GEN_SPEC, build_generator(GEN_SPEC).eval(), {}),
    )
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return load_bundle(_save(tmp_path_factory.mktemp("onnx") / "bundle", seed=0))


@pytest.fixture(scope="module")
def exported(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "onnx"
    export_onnx(bundle, out)
    return out


@pytest.fixture(scope="module")
def served(bundle: Bundle, exported: Path) -> Bundle:
    return with_onnx(bundle, exported)


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


def test_export_writes_every_network_and_its_record(bundle: Bundle, exported: Path) -> None:
    assert sorted(p.name for p in exported.iterdir()) == [
        "a.onnx",
        "b.onnx",
        ONNX_MANIFEST,
        "translator.onnx",
    ]
    record = read_onnx_manifest(exported)
    m = bundle.manifest
    assert [x.source_sha256 for x in record.members] == [e.sha256 for e in m.members]
    assert [x.dim for x in record.members] == [16, 24]
    assert record.translator is not None and m.translator is not None
    assert record.translator.source_sha256 == m.translator.sha256
    assert record.parity["embedding_max_abs"] < 1e-5
    assert record.parity["translator_max_abs"] < 1e-4


def test_onnx_embeddings_match_pytorch(
    bundle: Bundle, served: Bundle, gallery: tuple[list[Image.Image], list[Image.Image]]
) -> None:
    assert isinstance(served.embedder, OnnxEmbedder) and isinstance(served.embedder, BaseEmbedder)
    assert served.inference == {"backend": "onnx", "precision": "fp32"}
    assert served.embedder.dim == bundle.embedder.dim == 40
    sketches, photos = gallery
    torch_q, torch_g = bundle.embedder.embed(sketches, "sketch"), bundle.embedder.embed(photos)
    onnx_q, onnx_g = served.embedder.embed(sketches, "sketch"), served.embedder.embed(photos)
    assert float(np.abs(onnx_q - torch_q).max()) < 1e-5
    assert float(np.abs(onnx_g - torch_g).max()) < 1e-5
    top = [
        np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :10]
        for q, g in ((torch_q, torch_g), (onnx_q, onnx_g))
    ]
    np.testing.assert_array_equal(top[1], top[0])  # same items in the same order


def test_onnx_embedder_shares_the_interface(bundle: Bundle, served: Bundle) -> None:
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 40, 3), np.uint8))
    mirrored = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    emb = served.embedder.embed([photo, mirrored])
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-5)  # flip TTA
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sketch = served.embedder.embed([photo], "sketch")
    np.testing.assert_allclose(sketch, served.embedder.embed([photo.convert("L")], "sketch"))
    assert served.embedder.embed([]).shape == (0, 40)
    with pytest.raises(ValueError, match="expected"):
        served.embedder.embed_tensor(torch.zeros((1, 3, 32, 32), dtype=torch.uint8))
    with pytest.raises(ValueError, match="modality"):
        served.embedder.embed([photo], "drawing")  # type: ignore[arg-type]


def test_onnx_translation_matches_pytorch(bundle: Bundle, served: Bundle) -> None:
    assert isinstance(served.translator, OnnxTranslator)
    assert isinstance(served.translator, BaseTranslator) and bundle.translator is not None
    rng = np.random.default_rng(1)
    sketches = [Image.fromarray(rng.integers(0, 256, (128, 64), np.uint8)) for _ in range(3)]
    a = np.stack([np.asarray(im) for im in bundle.translator.translate_batch(sketches)])
    b = np.stack([np.asarray(im) for im in served.translator.translate_batch(sketches)])
    assert a.shape == b.shape == (3, 64, 32, 3)
    assert int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1  # rounding at most
    assert float((a == b).mean()) > 0.99


def test_an_altered_onnx_file_is_refused(bundle: Bundle, exported: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(exported, tmp_path / "copy"))
    with (copy / "b.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        with_onnx(bundle, copy)


def test_an_export_of_other_weights_is_refused(
    bundle: Bundle, exported: Path, tmp_path: Path
) -> None:
    other = load_bundle(_save(tmp_path / "other", seed=1))
    with pytest.raises(BundleError, match="other weights"):
        with_onnx(other, exported)


def test_a_graph_that_computes_something_else_is_refused(
    bundle: Bundle, exported: Path, tmp_path: Path
) -> None:
    """Even with a record that names the right weights and hashes, the outputs are checked."""
    other = load_bundle(_save(tmp_path / "other", seed=1))
    other_export = tmp_path / "other-onnx"
    export_onnx(other, other_export)
    copy = Path(shutil.copytree(exported, tmp_path / "copy"))
    shutil.copy(other_export / "a.onnx", copy / "a.onnx")
    record = json.loads((copy / ONNX_MANIFEST).read_text())
    record["members"][0]["sha256"] = read_onnx_manifest(other_export).members[0].sha256
    (copy / ONNX_MANIFEST).write_text(json.dumps(record))
    with pytest.raises(BundleError, match="ONNX embeddings differ from PyTorch"):
        with_onnx(bundle, copy)


def test_cli_export_onnx(bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli-onnx"
    assert main(["model", "export-onnx", str(bundle.path), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "a.onnx, b.onnx, translator.onnx" in printed and "embedding_max_abs" in printed
    with_onnx(bundle, out)
    assert main(["model", "export-onnx", str(bundle.path), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["model", "export-onnx", str(tmp_path / "none"), str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
