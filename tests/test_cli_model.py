"""Tests for `sketchreid model info|verify|annotate`."""

from __future__ import annotations

import json
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


def _figures(r1: float) -> dict[str, dict[str, float]]:
    return {k: {"mean": r1 + i / 10, "std": 0.01} for i, k in enumerate(("rank1", "rank5"))} | {
        "rank10": {"mean": 0.7, "std": 0.02},
        "mAP": {"mean": 0.3, "std": 0.03},
    }


def test_annotate_records_crossval_and_fit_reports(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = (bundle / "m0.pt").read_bytes()
    cv = {
        "command": "sketchreid crossval --splits 2",
        "archs": ["resnet8"],
        "protocol": {"n_splits": 2, "split_seeds": [1, 2]},
        "train_seconds_mean": 12.5,
        "variants": {"plain": _figures(0.2), "rerank": _figures(0.1)},
    }
    fit = {
        "command": "sketchreid evaluate --test-ids all",
        "rank1": 0.5,
        "rank5": 0.6,
        "rank10": 0.8,
        "mAP": 0.55,
        "n_queries": 3,
        "n_gallery": 6,
        "translated": False,
    }
    (tmp_path / "cv.json").write_text(json.dumps(cv))
    (tmp_path / "fit.json").write_text(json.dumps(fit))
    argv = ["model", "annotate", str(bundle), "--name", "shipped", "--version", "2.0"]
    argv += ["--crossval", f"ship={tmp_path / 'cv.json'}", "--fit", str(tmp_path / "fit.json")]
    argv += ["--note", "first note", "--note", "second"]
    assert main(argv) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert (manifest["name"], manifest["version"]) == ("shipped", "2.0")
    assert manifest["notes"] == ["first note", "second"]
    recorded = manifest["evaluation"]["crossval"]["ship"]
    assert recorded["command"] == cv["command"]
    assert recorded["protocol"] == cv["protocol"]
    assert recorded["variants"]["rerank"]["rank1"] == {"mean": 0.1, "std": 0.01}
    assert recorded["variants"]["plain"]["mAP"] == {"mean": 0.3, "std": 0.03}
    assert manifest["evaluation"]["fit_check"]["rank1"] == 0.5
    assert manifest["evaluation"]["fit_check"]["n_gallery"] == 6
    assert manifest["evaluation"]["rank1"] == 0.123456  # other evaluation entries are kept
    assert (bundle / "m0.pt").read_bytes() == weights
    assert main(["model", "verify", str(bundle)]) == 0
    assert "OK shipped 2.0" in capsys.readouterr().out

    # A later report is added beside the recorded ones; the same label replaces; drop removes.
    (tmp_path / "cv2.json").write_text(json.dumps({**cv, "command": "sketchreid crossval x"}))
    assert (
        main(["model", "annotate", str(bundle), "--crossval", f"more={tmp_path / 'cv2.json'}"]) == 0
    )
    recorded = json.loads((bundle / "manifest.json").read_text())["evaluation"]["crossval"]
    assert sorted(recorded) == ["more", "ship"] and recorded["ship"]["command"] == cv["command"]
    assert main(["model", "annotate", str(bundle), "--drop-crossval", "ship"]) == 0
    recorded = json.loads((bundle / "manifest.json").read_text())["evaluation"]["crossval"]
    assert list(recorded) == ["more"]
    assert main(["model", "annotate", str(bundle), "--drop-crossval", "ship"]) == 2
    assert "no cross-validation report 'ship' (recorded: more)" in capsys.readouterr().err


def test_annotate_refuses_what_is_not_a_report(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (bundle / "manifest.json").read_text()
    (tmp_path / "x.json").write_text(json.dumps({"rank1": 0.3}))
    assert main(["model", "annotate", str(bundle), "--crossval", f"a={tmp_path / 'x.json'}"]) == 2
    assert "not a `sketchreid crossval` report" in capsys.readouterr().err
    assert main(["model", "annotate", str(bundle), "--crossval", "no-equals-sign"]) == 2
    assert "LABEL=JSON" in capsys.readouterr().err
    assert (bundle / "manifest.json").read_text() == before
