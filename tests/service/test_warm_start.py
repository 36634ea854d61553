"""``docker/warm_start.py``, run while the serving image is built: the server starts once (a
start that fails fails the build, with the server's output), and the bytecode it compiled is
kept as unchecked-hash files, valid whatever the file times become in the image."""

from __future__ import annotations

import importlib.util
import os
import py_compile
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from app.cli.main import main

from .helpers import build_tiny_bundle

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docker" / "warm_start.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("warm_start", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prepared_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with its prepared ONNX files, as the image holds (its start needs no PyTorch)."""
    folder = build_tiny_bundle(tmp_path_factory.mktemp("warm") / "tiny")
    assert main(["model", "prepare", str(folder)]) == 0
    return folder


def _run(tmp_path: Path, model_dir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["SKETCHREID_MODEL_DIR"] = str(model_dir)
    env["SKETCHREID_BACKEND"] = "auto"  # the image's default (conftest sets torch for others)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # as in the image: the script must lift it
    env["PYTHONPYCACHEPREFIX"] = str(tmp_path / "pyc")  # this virtualenv's caches stay as they are
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--timeout", "240"],
        cwd=ROOT,  # the migrations folder, as /src in the build stage
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_start_that_works_leaves_the_bytecode_it_compiled(
    tmp_path: Path, prepared_bundle: Path
) -> None:
    done = _run(tmp_path, prepared_bundle)
    assert done.returncode == 0, done.stderr
    assert "warm_start: ready;" in done.stdout
    # The server wrote bytecode for what a start imports (with bytecode writing lifted).
    cached = {p.name for p in (tmp_path / "pyc").rglob("*.pyc")}
    assert {"main.cpython-311.pyc", "context.cpython-311.pyc"} <= cached, sorted(cached)[:20]
    assert not any("torch" in p.parts for p in (tmp_path / "pyc").rglob("*.pyc"))


def test_a_start_that_fails_fails_with_the_servers_reason(tmp_path: Path) -> None:
    empty = tmp_path / "no-bundle"
    empty.mkdir()
    done = _run(tmp_path, empty)
    assert done.returncode == 1
    assert "no model bundle in" in done.stderr  # the server's own line
    assert "warm_start: the server exited with status 2" in done.stderr


def test_bytecode_is_pinned_as_unchecked_hash(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    (site / "pkg").mkdir(parents=True)
    source = site / "pkg" / "mod.py"
    source.write_text("VALUE = 42\n")
    pyc = Path(py_compile.compile(str(source), doraise=True))  # a timestamp pyc
    orphan = pyc.parent / "gone.cpython-311.pyc"  # bytecode whose source is not there
    orphan.write_bytes(pyc.read_bytes())
    assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0
    module = _load()
    assert module.pin_bytecode([site], since=pyc.stat().st_mtime + 10) == 0  # older: left
    assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0
    assert module.pin_bytecode([site]) == 1
    assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 1  # hash-based, unchecked
    # The image's file times differ from the build's, and Python must not check them: with the
    # source changed behind its back, a fresh interpreter still runs the pinned bytecode.
    source.write_text("VALUE = 1\n")
    os.utime(source, (0, 0))
    code = "import pkg.mod; print(pkg.mod.VALUE)"
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPYCACHEPREFIX", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "42", out.stderr
