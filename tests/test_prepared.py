"""A bundle's prepared ONNX files (`sketchreid model prepare`): written beside the weights,
recorded in the manifest, served by sha256 alone (no export, no PyTorch at load), computing
the PyTorch networks' vectors, and refused when any link of the checksum chain breaks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from service.helpers import person_image, sketch_png

from app.cli.main import main
from app.errors import BundleError
from app.ml.bundle.manifest import read_manifest
from app.ml.bundle.onnx_files import ONNX_MANIFEST, read_onnx_manifest
from app.ml.bundle.onnx_runtime import OnnxEmbedder, OnnxTranslator
from app.ml.bundle.prepared import load_prepared, prepared_dir
from app.ml.bundle.store import Bundle, load_bundle
from app.ml.images import load_image

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def prepared(
    random_bundle_dir: Path, synth_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A copy of the random-weight test bundle (one resnet8 member and a translator), prepared
    in fp32 and int8 (calibrated on the 12 synthetic people, as tests/test_onnx_int8.py)."""
    bundle = Path(shutil.copytree(random_bundle_dir, tmp_path_factory.mktemp("prepared") / "b"))
    args = ["model", "prepare", str(bundle), "--int8", "--calibration-root", str(synth_root)]
    assert main(args) == 0
    return bundle


@pytest.fixture
def copy(prepared: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(prepared, tmp_path / "tiny"))


def test_prepare_writes_both_folders_and_records_them_in_the_manifest(prepared: Path) -> None:
    manifest = read_manifest(prepared)
    assert set(manifest.onnx) == {"fp32", "int8"}
    for precision in ("fp32", "int8"):
        record = read_onnx_manifest(prepared_dir(prepared, precision))
        assert record.precision == precision
        assert [m.source_sha256 for m in record.members] == [m.sha256 for m in manifest.members]
    # Weights untouched: the PyTorch bundle still loads and verifies.
    assert load_bundle(prepared).manifest.members == manifest.members


def test_prepared_files_serve_the_pytorch_vectors(prepared: Path) -> None:
    reference = load_bundle(prepared)
    served = load_prepared(prepared, "fp32")
    assert served is not None and served.members == [] and served.generator is None
    assert isinstance(served.embedder, OnnxEmbedder)
    assert isinstance(served.translator, OnnxTranslator)
    assert served.inference == {"backend": "onnx", "precision": "fp32"}
    photos = [person_image(s) for s in range(6)]
    sketches = [load_image(sketch_png(s)) for s in range(3)]
    for images, modality in ((photos, "photo"), (sketches, "sketch")):
        np.testing.assert_allclose(
            served.embedder.embed(images, modality),  # type: ignore[arg-type]
            reference.embedder.embed(images, modality),  # type: ignore[arg-type]
            atol=1e-4,
        )
    assert reference.translator is not None and served.translator is not None
    want = np.asarray(reference.translator.translate(sketches[0]), np.int16)
    have = np.asarray(served.translator.translate(sketches[0]), np.int16)
    assert np.abs(want - have).max() <= 1


def test_prepared_int8_serves_int8_arithmetic(prepared: Path) -> None:
    served = load_prepared(prepared, "int8")
    assert served is not None and served.inference == {"backend": "onnx", "precision": "int8"}
    fp32 = load_prepared(prepared, "fp32")
    assert fp32 is not None
    photos = [person_image(s) for s in range(6)]
    have, want = served.embedder.embed(photos), fp32.embedder.embed(photos)
    assert np.abs(have - want).max() > 1e-4  # int8 arithmetic, not fp32 behind a label


def test_a_bundle_without_prepared_files_gives_none(random_bundle_dir: Path) -> None:
    assert load_prepared(random_bundle_dir, "fp32") is None


def _rewrite(path: Path, change: dict[str, object]) -> None:
    data = json.loads(path.read_text())
    data.update(change)
    path.write_text(json.dumps(data))


def test_an_altered_onnx_file_is_refused(copy: Path) -> None:
    graph = prepared_dir(copy, "fp32") / "resnet8.onnx"
    graph.write_bytes(graph.read_bytes()[:-1] + b"\0")
    with pytest.raises(BundleError, match=r"resnet8\.onnx: sha256 mismatch"):
        load_prepared(copy, "fp32")


def test_a_rewritten_record_is_refused_by_the_manifest(copy: Path) -> None:
    """Files swapped together with a record that matches them: only the manifest's digest of
    the record catches it."""
    record = prepared_dir(copy, "fp32") / ONNX_MANIFEST
    _rewrite(record, {"parity": {"embedding_max_abs": 0.0}})
    with pytest.raises(BundleError, match="differs from the one the bundle's manifest records"):
        load_prepared(copy, "fp32")


def test_an_altered_weight_file_is_refused(copy: Path) -> None:
    weights = copy / "resnet8.pt"
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(BundleError, match=r"resnet8\.pt: sha256 mismatch"):
        load_prepared(copy, "fp32")


def test_a_missing_prepared_folder_is_refused(copy: Path) -> None:
    shutil.rmtree(prepared_dir(copy, "fp32"))
    with pytest.raises(BundleError, match="missing, but the bundle's manifest lists it"):
        load_prepared(copy, "fp32")


def test_int8_files_that_are_fp32_graphs_are_refused(copy: Path) -> None:
    """An int8 folder whose member graph is the fp32 one (its record rewritten to match, and
    the manifest too): the quantised-graph check refuses it."""
    from app.ml.bundle.manifest import _sha256, update_manifest

    int8, fp32 = prepared_dir(copy, "int8"), prepared_dir(copy, "fp32")
    shutil.copyfile(fp32 / "resnet8.onnx", int8 / "resnet8.onnx")
    record = json.loads((int8 / ONNX_MANIFEST).read_text())
    record["members"][0]["sha256"] = _sha256(int8 / "resnet8.onnx")
    (int8 / ONNX_MANIFEST).write_text(json.dumps(record))
    onnx = dict(read_manifest(copy).onnx)
    onnx["int8"] = _sha256(int8 / ONNX_MANIFEST)
    update_manifest(copy, onnx=onnx)
    with pytest.raises(BundleError, match="not an int8 graph"):
        load_prepared(copy, "int8")


def test_prepare_without_int8_removes_the_int8_folder(copy: Path) -> None:
    assert main(["model", "prepare", str(copy)]) == 0
    assert set(read_manifest(copy).onnx) == {"fp32"}
    assert not prepared_dir(copy, "int8").exists()
    assert load_prepared(copy, "int8") is None
    assert isinstance(load_prepared(copy, "fp32"), Bundle)


def test_verify_and_info_name_the_prepared_files(
    prepared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["model", "verify", str(prepared)]) == 0
    out = capsys.readouterr().out
    assert "OK prepared fp32" in out and "OK prepared int8" in out
    assert main(["model", "info", str(prepared)]) == 0
    assert "prepared    onnx/fp32, onnx/int8" in capsys.readouterr().out


def test_prepared_folders_are_readable_by_other_users(prepared: Path) -> None:
    """A container serves the bundle as its own user: folders made owner-only by mkdtemp
    would stop the start with a permission error."""
    for precision in ("fp32", "int8"):
        assert prepared_dir(prepared, precision).stat().st_mode & 0o005 == 0o005


def test_auto_serves_the_prepared_int8_files_on_a_vnni_cpu_and_fp32_elsewhere(
    prepared: Path, random_bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PRECISION=auto: int8 only where the graphs were quantised for (8-bit dot products) and
    only from files the bundle carries; never PyTorch's bf16 on the CPU."""
    from app.core.config import load_settings
    from app.services.model import load_model

    def served(bundle: Path) -> dict[str, str]:
        settings = load_settings(DATA_DIR=tmp_path / "data", MODEL_DIR=bundle, PRECISION="auto")
        return load_model(settings).inference

    monkeypatch.setattr("app.ml.infer.precision.cpu_has_vnni", lambda: True)
    assert served(prepared) == {"backend": "onnx", "precision": "int8"}
    monkeypatch.setattr("app.ml.infer.precision._cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert served(random_bundle_dir) == {"backend": "onnx", "precision": "fp32"}
    monkeypatch.setattr("app.ml.infer.precision.cpu_has_vnni", lambda: False)
    assert served(prepared) == {"backend": "onnx", "precision": "fp32"}
