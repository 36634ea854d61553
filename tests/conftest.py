"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = (Path(__file__).parents[1] / "../shared/data").resolve()


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (the real research data sets), or skip the test when it is absent."""
    if not (SHARED_DATA / "pku-sketch-dev").is_dir():
        pytest.skip(f"../shared/data not present: {SHARED_DATA / 'pku-sketch-dev'} is missing")
    return SHARED_DATA
