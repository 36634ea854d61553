"""Tests for `sketchreid model info|verify|annotate|combine`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli.main import main
from app.ml.bundle.store import (
    combine_bundles,
    load_bundle,
    read_manifest,
    resave,
    save_bundle,
    update_manifest,
)
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


def test_annotate_query_view_needs_a_translator_and_survives_resaving(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (bundle / "manifest.json").read_text()
    assert main(["model", "annotate", str(bundle), "--query-view", "fused"]) == 2
    assert "needs a translator" in capsys.readouterr().err
    assert (bundle / "manifest.json").read_text() == before
    assert main(["model", "info", str(bundle)]) == 0
    assert "query view  sketch (default)" in capsys.readouterr().out

    assert main(["model", "annotate", str(bundle), "--translation-weight", "1.5"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err
    assert main(["model", "annotate", str(bundle), "--query-view", "sketch"]) == 0
    assert read_manifest(bundle).query_view == "sketch"
    resave(load_bundle(bundle), tmp_path / "again")  # e.g. when a translator is added
    assert read_manifest(tmp_path / "again").query_view == "sketch"


def _part(root: Path, name: str, spec: MemberSpec, seed: int, pids: list[int]) -> Path:
    torch.manual_seed(seed)
    out = root / name
    save_bundle(
        out,
        name=name,
        version="1",
        members=[(spec.arch, spec, build_member(spec), {"fc": spec.fc_dim})],
        training={"train_pids": pids, "preset": {"name": name}},
        evaluation={"rank1": 0.5},
        notes=["about the part"],
    )
    return out


def _people(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, size=(64, 32, 3), dtype=np.uint8)) for _ in range(n)
    ]


def test_combine_writes_one_ensemble_of_members_with_different_heads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spp = MemberSpec(arch="resnet8", num_classes=3, fc_dim=8, spp=True, bn_neck=True)
    gap = MemberSpec(arch="resnet8", num_classes=3, fc_dim=4)
    a = _part(tmp_path, "a", spp, 1, [3, 1, 2])
    b = _part(tmp_path, "b", gap, 2, [1, 2, 3])
    out = tmp_path / "ensemble"
    assert main(["model", "combine", str(out), str(a), str(b), "--version", "9"]) == 0
    assert "members resnet8, resnet8-1" in capsys.readouterr().out

    manifest = read_manifest(out)
    assert [(m.spec.spp, m.spec.fc_dim) for m in manifest.members] == [(True, 8), (False, 4)]
    assert manifest.members[0].training == {"fc": 8}
    assert manifest.version == "9" and manifest.name == "a+b"
    assert manifest.training["train_pids"] == [1, 2, 3]
    assert [p["name"] for p in manifest.training["combined_from"]] == ["a", "b"]
    assert manifest.training["command"].startswith("sketchreid model combine")
    assert manifest.evaluation == {} and manifest.notes == []

    # the saved ensemble embeds exactly as the parts combined in memory: weights were copied
    images = _people(5)
    parts = [load_bundle(a), load_bundle(b)]
    want = combine_bundles(parts).embedder.embed(images)
    got = load_bundle(out).embedder.embed(images)
    assert got.shape == (5, 12)
    np.testing.assert_allclose(got, want, atol=1e-6)
    head = got[:, :8] / np.linalg.norm(got[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(head, parts[0].embedder.embed(images), atol=1e-5)


def test_combine_refuses_parts_trained_on_other_people(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = MemberSpec(arch="resnet8", num_classes=3, fc_dim=4)
    a = _part(tmp_path, "a", spec, 1, [1, 2, 3])
    b = _part(tmp_path, "b", spec, 2, [1, 2, 4])
    out = tmp_path / "ensemble"
    assert main(["model", "combine", str(out), str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "trained on different identities" in err and str(b) in err
    assert not out.exists()
    assert main(["model", "combine", str(out), str(a)]) == 2
    assert "at least two bundles" in capsys.readouterr().err
    assert main(["model", "combine", str(a), str(a), str(b)]) == 2
    assert "one of the bundles being combined" in capsys.readouterr().err
    assert not out.exists() and read_manifest(a).name == "a"


def _with_translator(root: Path, name: str, pids: list[int]) -> Path:
    """A bundle with a translator trained (as its record says) on ``pids``."""
    from app.ml.models.cyclegan import GeneratorSpec, build_generator

    torch.manual_seed(7)
    spec = MemberSpec(arch="resnet8", num_classes=3, fc_dim=4)
    gen_spec = GeneratorSpec(ngf=8, n_blocks=1, input_size=(64, 32))
    out = root / name
    save_bundle(
        out,
        name=name,
        version="1",
        members=[(spec.arch, spec, build_member(spec), {})],
        training={"train_pids": pids},
        translator=(gen_spec, build_generator(gen_spec), {"train_pids": pids, "seed": 3}),
    )
    return out


def test_combine_carries_a_translator_over_from_a_bundle_of_the_same_people(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Retrained members get the shipped translator (it does not depend on them), but only
    one trained on the members' identities: another would have seen other people."""
    spec = MemberSpec(arch="resnet8", num_classes=3, fc_dim=4)
    a = _part(tmp_path, "a", spec, 1, [1, 2, 3])
    b = _part(tmp_path, "b", spec, 2, [1, 2, 3])
    same = _with_translator(tmp_path, "same", [3, 2, 1])
    other = _with_translator(tmp_path, "other", [1, 2, 4])
    out = tmp_path / "ensemble"

    assert (
        main(["model", "combine", str(out), str(a), str(b), "--translator-from", str(other)]) == 2
    )
    assert "trained on other identities" in capsys.readouterr().err and not out.exists()
    assert main(["model", "combine", str(out), str(a), str(b), "--translator-from", str(a)]) == 2
    assert "has no translator" in capsys.readouterr().err and not out.exists()

    assert main(["model", "combine", str(out), str(a), str(b), "--translator-from", str(same)]) == 0
    manifest = read_manifest(out)
    assert manifest.translator is not None
    assert manifest.translator.sha256 == read_manifest(same).translator.sha256  # type: ignore[union-attr]
    assert manifest.translator.training["seed"] == 3  # its own training record
    assert manifest.training["translator_from"] == str(same)
    (sketch,) = _people(1)
    got = load_bundle(out).translator.translate(sketch)  # type: ignore[union-attr]
    want = load_bundle(same).translator.translate(sketch)  # type: ignore[union-attr]
    assert np.array_equal(np.asarray(got), np.asarray(want))  # the same generator
