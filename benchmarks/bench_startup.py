"""Start to ready: seconds from launching `sketchreid serve` to the first 200 from /readyz,
with a new, empty data folder (SQLite in it, migrated first, not timed) each run.

    python benchmarks/bench_startup.py [--model model_store/default] [--runs 3]
        [--code DIR] [--env KEY=VALUE ...]

``--code`` runs another checkout's code (e.g. the main branch, for a before/after in one run);
``--env`` passes settings (e.g. ``SKETCHREID_PRECISION=int8``). Prints each run, the median
and whether the server process imported PyTorch.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The server reports at exit whether PyTorch was imported (it never is on the prepared path).
SERVE = """
import sys
from app.cli.main import main
code = main(sys.argv[1:])
print("TORCH_IMPORTED", "torch" in sys.modules, flush=True)
sys.exit(code)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_run(code: Path, model: Path, extra: dict[str, str]) -> tuple[float, bool]:
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        env = dict(os.environ)
        env.update(
            {
                "PYTHONPATH": str(code),
                "SKETCHREID_DATA_DIR": str(Path(tmp) / "data"),
                "SKETCHREID_DATABASE_URL": f"sqlite:///{Path(tmp) / 'db.sqlite'}",
                "SKETCHREID_MODEL_DIR": str(model),
            }
        )
        env.update(extra)
        cli = [sys.executable, "-c", SERVE]
        subprocess.run([*cli, "db", "upgrade"], env=env, cwd=code, check=True, capture_output=True)
        port = _free_port()
        start = time.perf_counter()
        server = subprocess.Popen(
            [*cli, "serve", "--port", str(port), "--log-level", "warning"],
            env=env,
            cwd=code,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"the server stopped: {server.communicate()[0][-2000:]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                        break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    time.sleep(0.05)
            ready = time.perf_counter() - start
        finally:
            server.send_signal(2)
            out = server.communicate(timeout=120)[0]
        return ready, "TORCH_IMPORTED True" in out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "model_store" / "default")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose code runs")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.env)
    times = []
    for i in range(args.runs):
        ready, torch_imported = one_run(args.code.resolve(), args.model.resolve(), extra)
        times.append(ready)
        print(f"run {i + 1}: ready after {ready:.2f} s (PyTorch imported: {torch_imported})")
    print(f"median {statistics.median(times):.2f} s over {args.runs} runs ({args.code}, {extra})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
