"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.ml.data.synth import generate_synthetic

SHARED_DATA = (Path(__file__).parents[1] / "../shared/data").resolve()


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (the real research data sets), or skip the test when it is absent."""
    if not (SHARED_DATA / "pku-sketch-dev").is_dir():
        pytest.skip(f"../shared/data not present: {SHARED_DATA / 'pku-sketch-dev'} is missing")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic PKU-Sketch set shared by the session (read it, never write to it):
    12 people (pids 1..12), one sketch and two photos (cameras 1 and 2) each, seed 0."""
    root = tmp_path_factory.mktemp("synth-small")
    generate_synthetic(root, 12, seed=0)
    return root
