"""`sketchreid data synth|inspect` through app.cli.main.main."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli.main import main


def test_synth_then_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--identities", "6", "--seed", "2"]) == 0
    printed = capsys.readouterr().out.strip()
    assert "\n" not in printed
    assert printed.startswith("wrote 6 identities, 12 photos and 6 sketches (styles ")

    assert main(["data", "inspect", "--data-root", str(out)]) == 0
    report = capsys.readouterr().out
    assert "identities: 6 (0 without a sketch)" in report
    assert "photos: 12" in report and "sketches: 6" in report
    assert "cameras: 1: 6, 2: 6" in report


def test_synth_refuses_a_non_empty_folder_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "something.txt").write_text("x")
    args = ["data", "synth", "--out", str(tmp_path), "--identities", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sketchreid data: error: --out folder is not empty")
    assert main([*args, "--force"]) == 0


def test_bad_values_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synth", "--out", str(tmp_path / "x"), "--identities", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "sketchreid data: error: identities must be between 1 and 100000, not 0\n"


@pytest.mark.parametrize("layout", ["pku", "market"])
def test_inspect_bad_path_exit_2_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str
) -> None:
    missing = tmp_path / "nowhere"
    assert main(["data", "inspect", "--data-root", str(missing), "--layout", layout]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"sketchreid data: error: data folder not found: {missing}\n"


def test_inspect_market(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "bounding_box_train"
    folder.mkdir()
    for name in ("0001_c1s1_000001_00.jpg", "0001_c2s1_000002_00.jpg", "-1_c1s1_000003_00.jpg"):
        (folder / name).write_bytes(b"")
    assert main(["data", "inspect", "--data-root", str(tmp_path), "--layout", "market"]) == 0
    report = capsys.readouterr().out
    assert "identities: 1" in report and "images: 3 (1 junk, 0 distractors)" in report


def test_missing_action_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["data"])
    assert exc.value.code == 2


@pytest.mark.realdata
def test_inspect_real_pku(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "inspect", "--data-root", str(shared_data / "pku-sketch-dev")]) == 0
    report = capsys.readouterr().out
    assert "identities: 150 (5 without a sketch)" in report
    assert "photos: 300" in report and "sketches: 145" in report
