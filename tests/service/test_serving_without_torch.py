"""The serving install has no PyTorch (issue 25): with a bundle's prepared ONNX files,
`sketchreid db upgrade`, `apikey create`, `ingest` and `serve` run, and a search over HTTP
answers, in processes where importing torch or torchvision fails. Commands that need PyTorch
say so in one line.

Each command runs in a fresh interpreter whose import system refuses ``torch`` and
``torchvision`` (a meta-path finder that raises ModuleNotFoundError, as a missing package
does), and that exits with 99 when the serving commands import them or even try to (where
PyTorch is installed, trying is importing it: seconds at every start). A PyTorch import that
creeps back into the serving path fails these tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.cli.main import COMMAND_MODULES, build_parser, main

from .helpers import build_tiny_bundle, jpeg, sketch_png

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import os, sys

tried = []

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            tried.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoTorch())
from app.cli.main import main

code = main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
if leaked or (tried and not os.environ.get("TORCH_IMPORT_EXPECTED")):
    # Where PyTorch is installed, an import tried here would load it (seconds at start).
    print("PyTorch imported or tried:", leaked[:5], tried[:5], file=sys.stderr)
    sys.exit(99)
sys.exit(code)
"""


def _env(tmp_path: Path, model: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "SKETCHREID_DATA_DIR": str(tmp_path / "data"),
            "SKETCHREID_DATABASE_URL": f"sqlite:///{tmp_path / 'sketchreid.db'}",
            "SKETCHREID_MODEL_DIR": str(model),
            "SKETCHREID_BACKEND": "auto",  # the default (conftest sets torch for other tests)
            "SKETCHREID_INDEX_SYNC_SECONDS": "0",
            "OMP_NUM_THREADS": "1",
        }
    )
    return env


def _sketchreid(
    env: dict[str, str], *args: str, torch_expected: bool = False
) -> subprocess.CompletedProcess[str]:
    if torch_expected:
        env = {**env, "TORCH_IMPORT_EXPECTED": "1"}
    return subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def prepared_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = build_tiny_bundle(tmp_path_factory.mktemp("no-torch") / "tiny")
    assert main(["model", "prepare", str(folder)]) == 0
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_blocker_really_refuses_torch(tmp_path: Path, prepared_bundle: Path) -> None:
    """The same child with a command that imports PyTorch: refused, so the tests below would
    see a PyTorch import on the serving path."""
    code = CHILD.replace("code = main(sys.argv[1:])", "import torch")
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(tmp_path, prepared_bundle),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "No module named 'torch'" in done.stderr


def test_serving_commands_run_without_pytorch(tmp_path: Path, prepared_bundle: Path) -> None:
    env = _env(tmp_path, prepared_bundle)
    crops = tmp_path / "crops"
    crops.mkdir()
    for seed in range(6):
        (crops / f"{seed:04d}_c{seed % 3 + 1}s1_000001_01.jpg").write_bytes(jpeg(seed))

    upgraded = _sketchreid(env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    made = _sketchreid(env, "apikey", "create", "--role", "admin", "--name", "test")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    ingested = _sketchreid(env, "ingest", str(crops), "--camera-from-filename", "--no-progress")
    assert ingested.returncode == 0, ingested.stderr
    assert "ingested 6 new" in ingested.stdout + ingested.stderr

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", CHILD, "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.2)
        headers = {"X-API-Key": key}
        model = httpx.get(f"{base}/api/v1/model", headers=headers, timeout=30).json()
        assert model["inference"] == {"backend": "onnx", "precision": "fp32"}
        found = httpx.post(
            f"{base}/api/v1/search",
            files={"sketch": ("s.png", sketch_png(1), "image/png")},
            data={"top_k": "6"},
            headers=headers,
            timeout=60,
        )
        assert found.status_code == 200, found.text
        assert found.json()["translated"] is True
        assert len(found.json()["results"]) == 6
    finally:
        server.send_signal(signal.SIGINT)  # uvicorn stops, then the child checks its imports
        out = server.communicate(timeout=60)[0]
    assert server.returncode in (0, 130), out  # 99: PyTorch was imported while serving
    # Nothing was exported at start: the bundle's own files served.
    assert not (tmp_path / "data" / "onnx").exists()


def test_a_bundle_without_prepared_files_says_what_to_do(tmp_path: Path) -> None:
    plain = build_tiny_bundle(tmp_path / "plain")
    env = _env(tmp_path, plain)
    assert _sketchreid(env, "db", "upgrade").returncode == 0
    served = _sketchreid(env, "serve", "--port", str(_free_port()), torch_expected=True)
    assert served.returncode == 2, served.stderr
    lines = served.stderr.strip().splitlines()
    assert "no prepared ONNX files" in lines[-1] and "sketchreid model prepare" in lines[-1]


def test_commands_that_need_pytorch_say_so_in_one_line(
    tmp_path: Path, prepared_bundle: Path
) -> None:
    env = _env(tmp_path, prepared_bundle)
    for args in (("train", "reid", "--help"), ("crossval",), ("model", "export-onnx", "a", "b")):
        done = _sketchreid(env, *args, torch_expected=True)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and "needs PyTorch" in done.stderr, done.stderr
        assert "sketch-reid[train]" in done.stderr
    # A bundle's prepared files verify without PyTorch; info reads the manifest.
    verified = _sketchreid(env, "model", "verify", str(prepared_bundle), torch_expected=True)
    assert verified.returncode == 0, verified.stderr
    assert "OK prepared fp32" in verified.stdout
    assert _sketchreid(env, "model", "info", str(prepared_bundle)).returncode == 0
    listed = _sketchreid(env, "--help", torch_expected=True).stdout
    for commands in COMMAND_MODULES.values():
        assert all(f"\n    {c}" in listed for c in commands), listed


def test_the_listed_commands_are_the_registered_ones() -> None:
    """COMMAND_MODULES names each module's commands (so they are listed when PyTorch is
    absent); they must be the ones the modules register."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    registered = set(sub.choices)  # type: ignore[arg-type]
    assert registered == {c for commands in COMMAND_MODULES.values() for c in commands}
