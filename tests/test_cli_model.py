"""Tests for `sketchreid model info|verify`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.cli.main import main
from app.ml.bundle import save_bundle, update_manifest
from app.ml.models.resnet_cifar import MemberSpec, build_member

torch.set_num_threads(1)


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    spec = MemberSpec(arch="resnet8", num_classes=3, fc_dim=8)
    out = tmp_path / "bundle"
    save_bundle(out, name="cli-demo", version="0.3", members=[("m0", spec, build_member(spec), {})])
    update_manifest(out, evaluation={"rank1": 0.123456, "split": "random"})
    return out


def test_info(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "info", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "cli-demo 0.3" in out
    assert "m0: resnet8 gap, fc 8" in out
    assert "translator  none" in out
    assert "rank1: 0.1235" in out


def test_verify_ok(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "verify", str(bundle)]) == 0
    assert capsys.readouterr().out.startswith("OK cli-demo 0.3")


def test_verify_corrupt(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (bundle / "m0.pt").write_bytes(b"garbage")
    assert main(["model", "verify", str(bundle)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sketchreid model: error:") and "m0.pt" in err
    assert len(err.splitlines()) == 1


def test_missing_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "info", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
