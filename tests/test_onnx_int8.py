"""int8 ONNX (static quantisation): graphs really quantised, embeddings within the int8 bound
of PyTorch fp32 on images the calibration did not see, and the checks that refuse tampered,
foreign, unquantised or badly calibrated folders."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli.main import main
from app.errors import BundleError
from app.ml.bundle.onnx_export import export_onnx
from app.ml.bundle.onnx_files import ONNX_MANIFEST, PROBE_FILE, read_onnx_manifest
from app.ml.bundle.onnx_int8 import (
    INT8_MIN_COSINE,
    INT8_MIN_DIFFERENCE,
    check_quantized_graph,
    cosines,
)
from app.ml.bundle.onnx_parity import with_onnx
from app.ml.bundle.onnx_quantize import CalibrationImages, quantize_onnx
from app.ml.bundle.onnx_runtime import OnnxEmbedder
from app.ml.bundle.store import Bundle, load_bundle, save_bundle
from app.ml.data.calibration import folder_calibration
from app.ml.data.synth import generate_synthetic
from app.ml.images import load_image
from app.ml.models.resnet_cifar import build_member

torch.set_num_threads(1)


def _images(root: Path, kind: str) -> list[Image.Image]:
    return [load_image(p) for p in sorted((root / kind).glob("*.jpg"))]


@pytest.fixture(scope="module")
def bundle(random_bundle_dir: Path) -> Bundle:
    return load_bundle(random_bundle_dir)


@pytest.fixture(scope="module")
def fp32_dir(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fp32") / "onnx"
    export_onnx(bundle, out)
    return out


@pytest.fixture(scope="module")
def int8_dir(
    bundle: Bundle, fp32_dir: Path, synth_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("int8") / "onnx"
    photos, sketches = _images(synth_root, "photo"), _images(synth_root, "sketch")
    quantize_onnx(bundle, fp32_dir, out, photos, sketches, source="synth_root")
    return out


@pytest.fixture(scope="module")
def unseen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """People the calibration never saw (another seed)."""
    root = tmp_path_factory.mktemp("unseen")
    generate_synthetic(root, 10, seed=7)
    return root


def _ops(path: Path) -> Counter[str]:
    import onnx

    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_the_int8_folder_holds_quantised_graphs_and_says_how(
    bundle: Bundle, fp32_dir: Path, int8_dir: Path
) -> None:
    record = read_onnx_manifest(int8_dir)
    fp32 = read_onnx_manifest(fp32_dir)
    assert record.precision == "int8" and fp32.precision == "fp32"
    q = record.quantization
    assert q is not None
    assert (q.quant_format, q.activation_type, q.weight_type, q.per_channel) == (
        "QDQ",
        "QUInt8",
        "QInt8",
        True,
    )
    assert (q.calibration.photos, q.calibration.sketches, q.calibration.translated) == (24, 12, 12)
    assert q.fp32_sha256 == {m.file: m.sha256 for m in fp32.members}
    assert [m.source_sha256 for m in record.members] == [e.sha256 for e in bundle.manifest.members]
    for member in record.members:
        ops = _ops(int8_dir / member.file)
        assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
        assert check_quantized_graph(int8_dir / member.file) == ops["Conv"] + ops["Gemm"] > 0
        with pytest.raises(BundleError, match="not an int8 graph"):
            check_quantized_graph(fp32_dir / member.file)
    # The translator stays fp32: the same file as the fp32 export's.
    assert record.translator is not None and fp32.translator is not None
    assert record.translator.sha256 == fp32.translator.sha256
    assert q.translator_precision == "fp32"
    probe = np.load(int8_dir / PROBE_FILE)
    assert probe.dtype == np.uint8 and probe.shape == (24, 3, 32, 16)
    assert record.parity["embedding_min_cosine"] >= INT8_MIN_COSINE


def test_int8_embeddings_stay_close_to_fp32_on_unseen_people(
    bundle: Bundle, int8_dir: Path, unseen: Path
) -> None:
    served = with_onnx(bundle, int8_dir)
    assert isinstance(served.embedder, OnnxEmbedder)
    assert served.inference == {"backend": "onnx", "precision": "int8"}
    assert served.translator is not None and served.translator.precision == "fp32"
    photos, sketches = _images(unseen, "photo"), _images(unseen, "sketch")
    lows, diffs = [], []
    for images, modality in ((photos, "photo"), (sketches, "sketch")):
        have = served.embedder.embed(images, modality)  # type: ignore[arg-type]
        want = bundle.embedder.embed(images, modality)  # type: ignore[arg-type]
        lows.append(float(cosines(have, want).min()))
        diffs.append(float(np.abs(have - want).max()))
    assert min(lows) >= INT8_MIN_COSINE, lows
    assert min(diffs) > INT8_MIN_DIFFERENCE, diffs  # int8 arithmetic, not fp32 in disguise


def test_a_tampered_int8_file_is_refused(bundle: Bundle, int8_dir: Path, tmp_path: Path) -> None:
    for name in ("resnet8.onnx", PROBE_FILE):
        copy = Path(shutil.copytree(int8_dir, tmp_path / name))
        with (copy / name).open("ab") as fh:
            fh.write(b"\0")
        with pytest.raises(BundleError, match="sha256 mismatch"):
            with_onnx(bundle, copy)


def test_fp32_graphs_under_an_int8_record_are_refused(
    bundle: Bundle, fp32_dir: Path, int8_dir: Path, tmp_path: Path
) -> None:
    """The int8 path bypassed: the record is right about everything but the graph."""
    copy = Path(shutil.copytree(int8_dir, tmp_path / "copy"))
    shutil.copy(fp32_dir / "resnet8.onnx", copy / "resnet8.onnx")
    record = json.loads((copy / ONNX_MANIFEST).read_text())
    record["members"][0]["sha256"] = read_onnx_manifest(fp32_dir).members[0].sha256
    (copy / ONNX_MANIFEST).write_text(json.dumps(record))
    with pytest.raises(BundleError, match="not an int8 graph"):
        with_onnx(bundle, copy)


def test_an_int8_folder_of_other_weights_is_refused(
    bundle: Bundle, int8_dir: Path, tmp_path: Path
) -> None:
    torch.manual_seed(1)
    spec = bundle.manifest.members[0].spec
    save_bundle(
        tmp_path / "other",
        name="other",
        version="1",
        members=[("resnet8", spec, build_member(spec).eval(), {})],
        input_size=bundle.manifest.input_size,
    )
    with pytest.raises(BundleError, match="other weights"):
        with_onnx(load_bundle(tmp_path / "other"), int8_dir)


def test_the_precision_asked_for_must_be_the_folders(
    bundle: Bundle, fp32_dir: Path, int8_dir: Path
) -> None:
    with pytest.raises(BundleError, match="holds fp32 graphs, not int8"):
        with_onnx(bundle, fp32_dir, "int8")
    with pytest.raises(BundleError, match="holds int8 graphs, not fp32"):
        with_onnx(bundle, int8_dir, "fp32")
    assert with_onnx(bundle, fp32_dir).inference["precision"] == "fp32"


def test_calibration_on_unnormalised_inputs_is_refused(
    bundle: Bundle,
    fp32_dir: Path,
    synth_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Calibrated on what the graphs never receive (no mean/std normalisation), the int8
    ranges clip real inputs and the cosine to fp32 collapses: no folder is written."""

    def raw(self: CalibrationImages, embedder: object) -> object:
        for images in self.kinds:
            yield np.ascontiguousarray(images.astype(np.float32) / 255)

    monkeypatch.setattr(CalibrationImages, "network_inputs", raw)
    photos, sketches = _images(synth_root, "photo"), _images(synth_root, "sketch")
    with pytest.raises(BundleError, match="too far from fp32"):
        quantize_onnx(bundle, fp32_dir, tmp_path / "bad", photos, sketches, source="x")
    assert not (tmp_path / "bad").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_calibration_images_come_from_a_folder_or_fail_with_a_message(
    synth_root: Path, tmp_path: Path
) -> None:
    drawn = folder_calibration(synth_root, 5, pids=[1, 2, 3, 4])
    assert (len(drawn.photos), len(drawn.sketches)) == (5, 4)
    assert "4 identities" in drawn.source
    (tmp_path / "photo").mkdir()
    Image.new("RGB", (16, 32)).save(tmp_path / "photo" / "1_1_1.jpg")
    from app.errors import DataLayoutError

    with pytest.raises(DataLayoutError, match="needs photos and sketches"):
        folder_calibration(tmp_path, 5)


def test_cli_model_quantize(
    random_bundle_dir: Path, synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "int8"
    args = ["model", "quantize", str(random_bundle_dir), str(out)]
    assert main([*args, "--calibration-root", str(synth_root), "--images", "6"]) == 0
    printed = capsys.readouterr().out
    assert "int8" in printed and "lowest cosine" in printed
    record = read_onnx_manifest(out)
    assert record.quantization is not None
    assert (record.quantization.calibration.photos, record.quantization.calibration.sketches) == (
        6,
        6,
    )
    assert str(synth_root) in record.quantization.calibration.source
    assert with_onnx(load_bundle(random_bundle_dir), out).inference["precision"] == "int8"
    assert main(args) == 2  # OUT exists
    assert "already exists" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*args[:3], str(tmp_path / "x"), "--calibration-root", str(empty)]) == 2
    assert "no photo/ folder" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_model_quantize_on_synthetic_people_by_default(
    random_bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "int8"
    assert main(["model", "quantize", str(random_bundle_dir), str(out), "--images", "4"]) == 0
    record = read_onnx_manifest(out)
    assert record.quantization is not None
    assert record.quantization.calibration.source.startswith("synthetic generator, 4 people")


def test_percentile_calibration_is_recorded_and_sets_other_ranges(
    bundle: Bundle, fp32_dir: Path, int8_dir: Path, synth_root: Path, tmp_path: Path
) -> None:
    """``calibration="percentile"`` clips activation ranges: the graphs differ from MinMax's
    (other QuantizeLinear scales), the record says which method made them, and they pass the
    same int8 bound."""
    import onnx
    from onnx import numpy_helper

    out = tmp_path / "pct"
    photos, sketches = _images(synth_root, "photo"), _images(synth_root, "sketch")
    record = quantize_onnx(
        bundle, fp32_dir, out, photos, sketches, source="synth_root", calibration="percentile"
    )
    assert record.quantization is not None
    assert record.quantization.calibrate_method == "Percentile"
    minmax = read_onnx_manifest(int8_dir).quantization
    assert minmax is not None and minmax.calibrate_method == "MinMax"
    assert record.parity["embedding_min_cosine"] >= INT8_MIN_COSINE

    def scales(path: Path) -> dict[str, float]:
        graph = onnx.load(str(path)).graph
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        return {
            n.input[0]: float(inits[n.input[1]].reshape(-1)[0])
            for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[1] in inits and inits[n.input[1]].size == 1
        }

    member = record.members[0].file
    a, b = scales(int8_dir / member), scales(out / member)
    shared = set(a) & set(b)
    assert shared and any(b[k] < a[k] * 0.999 for k in shared), "percentile clips some range"
    assert all(b[k] <= a[k] * 1.0001 for k in shared), "never wider than the observed range"
    # Vectors of the two calibrations are cached apart (evaluate's distractor cache).
    from app.ml.evaluation.distractors import bundle_key

    keys = {bundle_key(with_onnx(bundle, d)) for d in (int8_dir, out)}
    assert len(keys) == 2


def test_float_ends_keep_the_first_and_last_layers_float_and_nothing_else(
    bundle: Bundle, fp32_dir: Path, int8_dir: Path, synth_root: Path, tmp_path: Path
) -> None:
    """``float_ends`` leaves exactly the first convolution and the embedding layer in float,
    says so in the record, passes the int8 checks and bound; the same graphs under a record
    without ``float_ends`` are refused, and so is any other float layer."""
    import onnx

    from app.ml.bundle.onnx_int8 import FLOAT_ENDS_NODES

    out = tmp_path / "ends"
    photos, sketches = _images(synth_root, "photo"), _images(synth_root, "sketch")
    record = quantize_onnx(
        bundle, fp32_dir, out, photos, sketches, source="synth_root", float_ends=True
    )
    q = record.quantization
    assert q is not None and q.float_ends
    assert record.parity["embedding_min_cosine"] >= INT8_MIN_COSINE
    for member in record.members:
        path = out / member.file
        graph = onnx.load(str(path)).graph
        dq = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        weighted = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
        floats = sorted(n.name for n in weighted if n.input[0] not in dq)
        assert floats == sorted(FLOAT_ENDS_NODES)
        assert set(FLOAT_ENDS_NODES) <= set(q.float_nodes[member.file])
        assert check_quantized_graph(path, float_ends=True) == len(weighted)
        with pytest.raises(BundleError, match=r"2 of .* layers run in float"):
            check_quantized_graph(path)
        # Every layer float (the fp32 export) is refused even under float_ends.
        with pytest.raises(BundleError, match="not an int8 graph"):
            check_quantized_graph(fp32_dir / member.file, float_ends=True)
    # The whole folder loads and embeds through the checks of a served int8 folder.
    served = with_onnx(bundle, out, "int8")
    assert isinstance(served.embedder, OnnxEmbedder)
    probe = np.load(out / PROBE_FILE)
    ends = served.embedder.embed_array(probe)
    plain = with_onnx(bundle, int8_dir, "int8").embedder.embed_array(probe)
    assert not np.allclose(ends, plain, atol=1e-4), "float ends change the embeddings"
    # Evaluate's int8 cache keeps the two schemes apart.
    from app.ml.evaluation.distractors import bundle_key

    assert bundle_key(served) != bundle_key(with_onnx(bundle, int8_dir, "int8"))
