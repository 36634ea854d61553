"""End-to-end tests of the training and evaluation stack on synthetic data, through the CLI.

One small synthetic set (30 identities, 2 cameras, 1 photo each) and one reid bundle trained
on it are shared by the module; the commands run in-process through ``app.cli.main.main``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from app.cli.main import main
from app.ml.bundle.store import load_bundle
from app.ml.data.synth import generate_synthetic
from app.ml.models.resnet_cifar import MemberSpec
from app.ml.train.checkpoint import load_checkpoint, save_checkpoint
from app.ml.train.config import StageConfig
from app.ml.train.reid import new_member, train_stage
from app.ml.train.tensorset import PHOTO, SKETCH, TensorSet

IDENTITIES = 30


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_synthetic(root, IDENTITIES, seed=0)
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def reid_bundle(data_root: Path, workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smoke-preset resnet20 bundle trained for 2 epochs on every identity (no translator)."""
    out = tmp_path_factory.mktemp("bundles") / "reid-only"
    code = main(
        [
            "train",
            "reid",
            "--data-root",
            str(data_root),
            "--preset",
            "smoke",
            "--arch",
            "resnet20",
            "--epochs",
            "2",
            "--workdir",
            str(workdir),
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out


def _json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def _assert_fractions(report: dict[str, Any], n_queries: int, n_gallery: int) -> None:
    for key in ("rank1", "rank5", "rank10", "mAP"):
        assert 0.0 <= report[key] <= 1.0, key
    assert report["rank1"] <= report["rank5"] <= report["rank10"]
    cmc = report["cmc"]
    assert cmc and all(0.0 <= v <= 1.0 for v in cmc)
    assert cmc == sorted(cmc), "a CMC curve never decreases"
    assert cmc[0] == report["rank1"]
    assert report["n_queries"] == n_queries
    assert report["n_gallery"] == n_gallery


def test_train_reid_writes_a_bundle_that_verifies(
    reid_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _json(reid_bundle / "manifest.json")
    assert [m["spec"]["arch"] for m in manifest["members"]] == ["resnet20"]
    assert manifest["training"]["train_pids"] == list(range(1, IDENTITIES + 1))
    assert manifest["training"]["preset"]["name"] == "smoke"
    assert main(["model", "verify", str(reid_bundle)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK ") and "no translator" in out


def test_the_seed_decides_the_trained_weights(
    reid_bundle: Path, data_root: Path, workdir: Path, tmp_path: Path
) -> None:
    """The same command gives the same model, whatever ran before it in the process."""
    torch.rand(100)  # move the global generator on, as earlier work in the process would
    again = tmp_path / "again"
    argv = ["train", "reid", "--data-root", str(data_root), "--preset", "smoke"]
    argv += ["--arch", "resnet20", "--epochs", "2", "--workdir", str(workdir), "--no-progress"]
    assert main([*argv, "--out", str(again)]) == 0
    first = load_bundle(reid_bundle).members[0].state_dict()
    second = load_bundle(again).members[0].state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_translator_then_evaluate_on_the_training_identities(
    reid_bundle: Path,
    data_root: Path,
    workdir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle = tmp_path / "with-translator"
    shutil.copytree(reid_bundle, bundle)
    common = ["--data-root", str(data_root)]
    argv = ["train", "translator", *common, "--preset", "smoke", "--workdir", str(workdir)]
    assert main([*argv, "--no-progress", "--out", str(bundle)]) == 0
    assert "added a translator" in capsys.readouterr().out
    assert main(["model", "verify", str(bundle)]) == 0
    assert "with translator" in capsys.readouterr().out

    report_path, plot = tmp_path / "eval" / "report.json", tmp_path / "eval" / "cmc.png"
    argv = ["evaluate", *common, "--model", str(bundle), "--test-ids", "all"]
    assert main([*argv, "--json", str(report_path), "--plot", str(plot)]) == 0
    captured = capsys.readouterr()
    report = _json(report_path)
    _assert_fractions(report, n_queries=IDENTITIES, n_gallery=2 * IDENTITIES)
    assert report["translated"] is True and report["translator_available"] is True
    assert report["splits"][0]["train_test_overlap"] == IDENTITIES
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"warning: the bundle was trained on {IDENTITIES} of the test identities" in (
        captured.err
    )
    assert "rank1 " in captured.out and "mAP " in captured.out


def test_evaluate_without_a_translator(
    reid_bundle: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--data-root", str(data_root), "--model", str(reid_bundle)]
    argv += ["--test-ids", "all"]

    assert main([*argv, "--json", str(tmp_path / "a.json")]) == 0
    assert "the bundle has no translator; evaluating untranslated sketches" in (
        capsys.readouterr().err
    )
    assert _json(tmp_path / "a.json")["translated"] is False

    assert main([*argv, "--no-translate", "--json", str(tmp_path / "b.json")]) == 0
    assert "no translator" not in capsys.readouterr().err
    report = _json(tmp_path / "b.json")
    assert report["translated"] is False and report["translator_available"] is False
    _assert_fractions(report, n_queries=IDENTITIES, n_gallery=2 * IDENTITIES)


@pytest.mark.slow
def test_crossval_reports_mean_and_std_per_variant(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cv.json"
    argv = ["crossval", "--data-root", str(data_root), "--splits", "2", "--test-size", "10"]
    argv += ["--preset", "smoke", "--arch", "resnet20", "--epochs", "1", "--seed", "3"]
    argv += ["--workdir", str(tmp_path / "runs"), "--no-progress", "--json", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "2 splits of 10 test identities" in captured.err
    report = _json(out)
    assert report["protocol"]["n_splits"] == 2
    assert report["protocol"]["test_identities"] == [10, 10]
    assert report["protocol"]["train_identities"] == [IDENTITIES - 10] * 2
    assert set(report["variants"]) == {"plain", "rerank"}
    for name, variant in report["variants"].items():
        for key in ("rank1", "rank5", "rank10", "mAP"):
            assert set(variant[key]) == {"mean", "std"}
            assert 0.0 <= variant[key]["mean"] <= 1.0
            assert variant[key]["std"] >= 0.0
        assert len(variant["splits"]) == 2
        assert all(s["n_queries"] == 10 and s["n_gallery"] == 20 for s in variant["splits"])
        assert f"{name:>18}: rank1 " in captured.out
    assert not (tmp_path / "runs" / "splits" / "split00").exists(), "bundles are not kept"


# --------------------------------------------------------------------------- resuming


def _tiny_set() -> TensorSet:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(6)
    return TensorSet(
        images=torch.randint(0, 256, (len(labels), 3, 16, 8), dtype=torch.uint8, generator=g),
        labels=labels,
        pids=labels + 100,
        modality=torch.tensor([SKETCH if i % 6 == 0 else PHOTO for i in range(len(labels))]),
    )


def _fresh_model() -> torch.nn.Module:
    spec = MemberSpec(arch="resnet20", num_classes=4, fc_dim=16, input_size=(16, 8), dropout=0.2)
    return new_member(spec, None, seed=0)


class _Interrupt(Exception):
    pass


def test_an_interrupted_stage_resumes_to_the_same_weights(tmp_path: Path) -> None:
    cfg = StageConfig(
        epochs=4,
        batch_size=8,
        lr=0.05,
        step_size=2,
        warmup_epochs=1,
        random_erasing=0.5,
        pseudo_sketch=0.5,
        triplet_weight=1.0,
        instances_per_id=2,
    )
    data = _tiny_set()
    cpu = torch.device("cpu")
    straight = train_stage(_fresh_model(), data, cfg, device=cpu, seed=7, progress=False)

    checkpoint = tmp_path / "stage.ckpt"
    epochs_run: list[int] = []

    def stop_after_two(record: dict[str, Any]) -> None:
        epochs_run.append(record["epoch"])
        if record["epoch"] == 3:  # the checkpoint holds epochs 1-2 when the third one reports
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_stage(
            _fresh_model(),
            data,
            cfg,
            device=cpu,
            seed=7,
            log=stop_after_two,
            checkpoint=checkpoint,
            progress=False,
        )
    assert checkpoint.exists()
    torch.manual_seed(12345)  # whatever happened to the global generator in between
    resumed = train_stage(
        _fresh_model(),
        data,
        cfg,
        device=cpu,
        seed=7,
        log=lambda r: epochs_run.append(r["epoch"]),
        checkpoint=checkpoint,
        progress=False,
    )
    assert epochs_run == [1, 2, 3, 3, 4], "the resumed run starts after the checkpointed epoch"
    expected, got = straight.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert not torch.equal(expected["fc.weight"], _fresh_model().state_dict()["fc.weight"])


def test_a_checkpoint_of_another_configuration_is_not_resumed(tmp_path: Path) -> None:
    cfg = StageConfig(epochs=2, batch_size=8, lr=0.01, random_erasing=0.0)
    data, cpu = _tiny_set(), torch.device("cpu")
    checkpoint = tmp_path / "stage.ckpt"
    train_stage(
        _fresh_model(), data, cfg, device=cpu, seed=1, checkpoint=checkpoint, progress=False
    )
    other = cfg.model_copy(update={"lr": 0.02})
    epochs: list[int] = []
    train_stage(
        _fresh_model(),
        data,
        other,
        device=cpu,
        seed=1,
        log=lambda r: epochs.append(r["epoch"]),
        checkpoint=checkpoint,
        progress=False,
    )
    assert epochs == [1, 2]


def test_a_checkpoint_loads_on_the_cpu_whatever_the_training_device(tmp_path: Path) -> None:
    """RNG states must be CPU byte tensors: mapping them to the training device (CUDA on a GPU
    machine; "meta" stands in for it here) made every resume fail there."""
    cfg = StageConfig()
    path = tmp_path / "stage.ckpt"
    gen = torch.Generator().manual_seed(3)
    save_checkpoint(path, {"generator": gen.get_state(), "w": torch.ones(2)}, cfg, seed=3)
    state = load_checkpoint(path, cfg, 3, torch.device("meta"))
    assert state is not None
    assert state["w"].device.type == "cpu"
    torch.Generator().set_state(state["generator"])
    assert load_checkpoint(path, cfg, 4, torch.device("cpu")) is None, "another seed"


# --------------------------------------------------------------------------- bad input


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``argv``; assert exit code 2, no traceback, one error line; return that line."""
    code: object
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse rejects the arguments before the command runs
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert err.rstrip("\n").splitlines()[-1] == errors[0], "the message is the last line"
    return errors[0]


def _reid(data_root: Path, tmp_path: Path, *extra: str) -> list[str]:
    argv = ["train", "reid", "--data-root", str(data_root), "--preset", "smoke", *extra]
    return [*argv, "--workdir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]


def test_missing_data_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _fails(_reid(tmp_path / "nowhere", tmp_path), capsys)
    assert "folder not found" in line and "nowhere" in line


def test_unknown_architecture(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _fails(_reid(data_root, tmp_path, "--arch", "resnet57"), capsys)
    assert "unknown architecture 'resnet57'" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size", ["64", "64x", "4x4", "axb", "-64x32"])
def test_bad_input_size(
    size: str, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _fails(_reid(data_root, tmp_path, f"--input-size={size}"), capsys)
    assert "HEIGHTxWIDTH" in line


def test_translator_needs_an_existing_bundle(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_bundle = tmp_path / "empty"
    not_a_bundle.mkdir()
    argv = ["train", "translator", "--data-root", str(data_root), "--preset", "smoke"]
    line = _fails([*argv, "--workdir", str(tmp_path), "--out", str(not_a_bundle)], capsys)
    assert line.startswith("sketchreid train: error:")
    assert "is not a model bundle" in line
    assert list(not_a_bundle.iterdir()) == []


def test_evaluate_with_unknown_identities_in_the_split_file(
    reid_bundle: Path, data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [1, 2], "test": [3, 999, 1000]}))
    argv = ["evaluate", "--data-root", str(data_root), "--model", str(reid_bundle)]
    line = _fails([*argv, "--split-file", str(split), "--json", str(tmp_path / "r.json")], capsys)
    assert line.startswith("sketchreid evaluate: error:")
    assert "999, 1000" in line
    assert not (tmp_path / "r.json").exists()
