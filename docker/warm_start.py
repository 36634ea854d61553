"""Start the server once while the serving image is built, and keep the bytecode it compiled.

    python docker/warm_start.py [--timeout 300]

Runs ``sketchreid serve --migrate`` against a new SQLite database in a temporary data folder
(the bundle: ``SKETCHREID_MODEL_DIR``) until ``/readyz`` answers 200, then stops it. Two things
follow:

* a serving image whose start fails (a missing module, a bundle that does not load) fails to
  build, with the server's output;
* every module a start imports leaves its ``.pyc`` (Python writes them during this run; the
  image then runs with ``PYTHONDONTWRITEBYTECODE``). Each is rewritten as an *unchecked-hash*
  pyc, valid whatever the file times become when the virtualenv is copied into the image.
  Bytecode for the whole virtualenv would cost ~66 MB; what a start imports is ~24 MB, and
  compiling it at every start cost ~6 s (docs/service.md, "Containers").

Exit status 0 when the server was ready, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import py_compile
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_once(timeout: float) -> bool:
    """Serve until ready (True) or until the server exits or ``timeout`` passes (False)."""
    with tempfile.TemporaryDirectory(prefix="warm-start-") as tmp:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["SKETCHREID_DATA_DIR"] = str(Path(tmp) / "data")
        env["SKETCHREID_DATABASE_URL"] = f"sqlite:///{Path(tmp) / 'db.sqlite'}"
        port = _free_port()
        log = Path(tmp) / "serve.log"
        # The console script, as the image's CMD runs it (the working folder is not on its path).
        script = Path(sys.executable).parent / "sketchreid"
        command = [str(script), "serve", "--migrate", "--port", str(port)]
        with log.open("wb") as out:
            server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + timeout
            ready, exited = False, None
            try:
                while time.monotonic() < deadline and server.poll() is None:
                    if _ready(port):
                        ready = True
                        break
                    time.sleep(0.2)
                exited = server.poll()
            finally:
                server.terminate()
                try:
                    server.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
        if not ready:
            sys.stderr.write(log.read_text(errors="replace"))
            why = (
                f"exited with status {exited}"
                if exited is not None
                else (f"was not ready within {timeout:.0f} s")
            )
            print(f"warm_start: the server {why}", file=sys.stderr)
        return ready


def pin_bytecode(roots: list[Path], since: float = 0.0) -> int:
    """Rewrite each ``.pyc`` under ``roots`` written at or after ``since`` (a time.time()),
    whose source is there, as an unchecked-hash pyc (not compared with the source's time);
    returns how many."""
    count = 0
    for root in roots:
        for pyc in root.rglob("__pycache__/*.pyc"):
            if ".opt-" in pyc.name or pyc.stat().st_mtime < since:  # the image runs without -O
                continue
            name = pyc.name.split(".", 1)[0] + ".py"
            source = pyc.parent.parent / name
            if not source.is_file():
                continue
            py_compile.compile(
                str(source),
                cfile=str(pyc),
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
            count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    args = parser.parse_args(argv)
    started = time.time() - 1.0  # file times may be a little coarse
    if not start_once(args.timeout):
        return 1
    roots = sorted({Path(p) for p in sys.path if p and Path(p).is_dir() and "site-packages" in p})
    kept = pin_bytecode(roots, since=started)  # only what this start compiled
    print(f"warm_start: ready; {kept} bytecode files kept", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
