"""Batch ingestion over live HTTP, two code trees side by side: A/B with the same load.

Usage (from the repository root)::

    git archive <old commit> | tar -x -C /tmp/old
    .venv/bin/python benchmarks/ab_ingest.py --old /tmp/old --rounds 6

Starts one ``sketchreid serve`` per tree (``--old`` and ``--new``, default this checkout), each
with its own data folder and SQLite database and the same bundle (``--model``), waits for both to
be ready, sends each one untimed crop, then ``--rounds`` rounds of one batch request of
``--batch`` new synthetic crops to each server, the order flipping every round, so that a busy
machine slows both alike. Prints each round's crops/s and the totals. The servers inherit this
process's environment (thread variables included).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _server import free_port  # noqa: E402
from bench_service import crop  # noqa: E402


def start(tree: Path, folder: Path, model: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    """``serve`` from ``tree`` on a fresh ``folder``: (process, base URL, operator key)."""
    env = dict(
        os.environ,
        PYTHONPATH=str(tree),
        SKETCHREID_DATA_DIR=str(folder),
        SKETCHREID_MODEL_DIR=str(model),
        SKETCHREID_INDEX_SYNC_SECONDS="0",
    )

    def cli(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "app.cli.main", *args],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    cli("db", "upgrade")
    key = cli("apikey", "create", "--role", "operator", "--name", "op").split()[-1]
    port = free_port()
    log = (folder / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli.main", "serve", "--port", str(port),
         "--log-level", "warning"],
        cwd=tree,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    return process, f"http://127.0.0.1:{port}", key


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


def upload(url: str, key: str, seeds: range) -> float:
    """One batch request of the crops ``seeds``; its seconds."""
    files = [("images", (f"{i}.jpg", crop(i), "image/jpeg")) for i in seeds]
    start = time.perf_counter()
    r = httpx.post(
        f"{url}/api/v1/gallery/batch", files=files, headers={"X-API-Key": key}, timeout=600
    )
    elapsed = time.perf_counter() - start
    if r.status_code != 200 or r.json()["created"] != len(seeds):
        raise RuntimeError(f"{url}: {r.status_code} {r.text[:300]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="the other code tree")
    parser.add_argument("--new", type=Path, default=HERE.parent, help="default: this checkout")
    parser.add_argument("--model", type=Path, default=HERE.parent / "model_store" / "default")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args(argv)
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    with tempfile.TemporaryDirectory(prefix="ab-ingest-") as tmp:
        servers: dict[str, tuple[subprocess.Popen[bytes], str, str]] = {}
        try:
            for name, tree in trees.items():
                folder = Path(tmp) / name
                folder.mkdir()
                servers[name] = start(tree, folder, args.model.resolve())
            for process, url, key in servers.values():
                wait_ready(url, process)
                upload(url, key, range(1, 2))  # warm-up, untimed
            seconds = {name: 0.0 for name in servers}
            seed = 10_000
            for i in range(args.rounds):
                rates = {}
                for name in list(servers)[:: 1 if i % 2 == 0 else -1]:
                    _, url, key = servers[name]
                    elapsed = upload(url, key, range(seed, seed + args.batch))
                    seed += args.batch
                    seconds[name] += elapsed
                    rates[name] = args.batch / elapsed
                print(f"round {i + 1}: " + ", ".join(f"{n} {rates[n]:.1f}" for n in servers))
            crops = args.rounds * args.batch
            total = {name: crops / seconds[name] for name in servers}
            for name, rate in total.items():
                print(f"{name} ({trees[name]}): {crops} crops, {rate:.1f} crops/s over live HTTP")
            print(f"new / old: {total['new'] / total['old']:.2f}")
        finally:
            for process, _, _ in servers.values():
                process.terminate()
                process.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
