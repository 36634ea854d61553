"""`sketchreid evaluate --precision int8`: the evaluation runs ONNX Runtime's int8 graphs,
calibrated never on the identities it tests (the bundle's training identities less those, else
synthetic people), cached and reused.

A random-weight bundle (tests/conftest.py) on the session's 12-identity synthetic set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from app.cli.main import main
from app.ml.bundle.onnx_files import read_onnx_manifest
from app.ml.bundle.store import load_bundle, resave


def _evaluate(root: Path, model: Path, out: Path, *extra: str) -> dict[str, Any]:
    argv = ["evaluate", "--data-root", str(root), "--model", str(model), "--no-translate"]
    assert main([*argv, *extra, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert isinstance(report, dict)
    return report


def _pids_digest(pids: list[int]) -> str:
    return hashlib.sha256(" ".join(map(str, pids)).encode()).hexdigest()[:12]


def test_int8_is_calibrated_on_training_identities_and_the_cache_reused(
    random_bundle_dir: Path, synth_root: Path, tmp_path: Path
) -> None:
    model = tmp_path / "a"
    resave(load_bundle(random_bundle_dir), model, training={"train_pids": list(range(1, 9))})
    cache = tmp_path / "cache"
    int8 = ("--precision", "int8", "--int8-cache", str(cache), "--int8-images", "4")
    report = _evaluate(synth_root, model, tmp_path / "r.json", "--test-ids", "heldout", *int8)
    assert report["inference"] == {"backend": "onnx", "precision": "int8"}
    assert report["splits"][0]["test_pids"] == [9, 10, 11, 12]
    source = report["int8_calibration"][str(model)]
    assert source.startswith(str(synth_root)) and "8 identities" in source
    assert _pids_digest(list(range(1, 9))) in source
    (folder,) = cache.iterdir()
    record = read_onnx_manifest(folder)
    assert record.precision == "int8" and record.quantization is not None
    assert record.quantization.calibration.source == source
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = _evaluate(synth_root, model, tmp_path / "s.json", "--test-ids", "heldout", *int8)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    assert again["mAP"] == report["mAP"]


def test_int8_falls_back_to_synthetic_people_when_every_trained_identity_is_tested(
    random_bundle_dir: Path, synth_root: Path, tmp_path: Path
) -> None:
    model = tmp_path / "all"
    resave(load_bundle(random_bundle_dir), model, training={"train_pids": list(range(1, 13))})
    int8 = ("--precision", "int8", "--int8-cache", str(tmp_path / "c"), "--int8-images", "4")
    report = _evaluate(synth_root, model, tmp_path / "r.json", "--test-ids", "all", *int8)
    assert report["int8_calibration"][str(model)].startswith("synthetic generator, 4 people")
    assert report["inference"]["precision"] == "int8"


def test_backend_onnx_evaluates_the_served_fp32_graphs_with_torchs_figures(
    random_bundle_dir: Path, synth_root: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "onnx"
    onnx = ("--backend", "onnx", "--onnx-cache", str(cache))
    ref = _evaluate(synth_root, random_bundle_dir, tmp_path / "t.json", "--test-ids", "all")
    report = _evaluate(
        synth_root, random_bundle_dir, tmp_path / "o.json", "--test-ids", "all", *onnx
    )
    assert ref["inference"] == {"backend": "torch", "precision": "fp32"}
    assert report["inference"] == {"backend": "onnx", "precision": "fp32"}
    assert report["mAP"] == ref["mAP"] and report["cmc"] == ref["cmc"]
    (folder,) = cache.iterdir()
    assert folder.name.endswith("-fp32") and read_onnx_manifest(folder).precision == "fp32"
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    _evaluate(synth_root, random_bundle_dir, tmp_path / "p.json", "--test-ids", "all", *onnx)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps


def test_backend_onnx_refuses_bf16(
    random_bundle_dir: Path, synth_root: Path, tmp_path: Path
) -> None:
    argv = ["evaluate", "--data-root", str(synth_root), "--model", str(random_bundle_dir)]
    extra = ["--test-ids", "all", "--backend", "onnx", "--precision", "bf16"]
    extra += ["--json", str(tmp_path / "r.json")]
    assert main([*argv, *extra]) == 2
    assert not (tmp_path / "r.json").exists()


def test_int8_calibration_methods_are_cached_apart(
    random_bundle_dir: Path, synth_root: Path, tmp_path: Path
) -> None:
    model = tmp_path / "a"
    resave(load_bundle(random_bundle_dir), model, training={"train_pids": list(range(1, 9))})
    cache = tmp_path / "cache"
    int8 = ("--precision", "int8", "--int8-cache", str(cache), "--int8-images", "4")
    _evaluate(synth_root, model, tmp_path / "m.json", "--test-ids", "heldout", *int8)
    pct = ("--int8-calibration", "percentile")
    _evaluate(synth_root, model, tmp_path / "p.json", "--test-ids", "heldout", *int8, *pct)
    folders = sorted(cache.iterdir(), key=lambda p: p.name)
    assert len(folders) == 2 and folders[1].name == folders[0].name + "-percentile"
    methods = [read_onnx_manifest(f).quantization for f in folders]
    assert [q.calibrate_method for q in methods if q] == ["MinMax", "Percentile"]
