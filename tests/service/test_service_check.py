"""scripts/service_check.py: the whole service path over a PKU-style folder, per query view."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from app.cli.main import main as cli

from .helpers import build_tiny_bundle

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "service_check.py"


def test_service_check_counts_each_view_over_one_gallery(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert cli(["data", "synth", "--out", str(data), "--identities", "6"]) == 0
    bundle = build_tiny_bundle(tmp_path / "bundle")
    spec = importlib.util.spec_from_file_location("service_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "check.json"
    argv = ["--model", str(bundle), "--data-root", str(data), "--top-k", "12"]
    assert module.main([*argv, "--view", "sketch", "--view", "fused", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["views"]) == ["sketch", "fused"]  # as the service answered each search
    assert report["gallery"] == 12 and report["view"] == "sketch"
    for figures in report["views"].values():
        # top 12 of a 12-photo gallery: every sketch finds its person somewhere
        assert figures["queries"] == 6 and figures["topk_hits"] == 6
        assert 0 <= figures["rank1_hits"] <= 6
        assert figures["timings_p50_ms"]["embed"] > 0
    assert report["views"]["sketch"]["timings_p50_ms"]["translate"] == 0
    assert report["views"]["fused"]["timings_p50_ms"]["translate"] > 0
