"""Bounded shutdown (issue 24): ``sketchreid serve`` on SIGTERM cuts off a request still
running after SHUTDOWN_TIMEOUT_SECONDS (a client sending its body at a trickle), then saves
the index and says so in its log."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from .helpers import jpeg

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sigterm_cuts_off_a_slow_upload_after_the_timeout_and_saves_the_index(
    tmp_path: Path, bundle_dir: Path
) -> None:
    port = _free_port()
    data = tmp_path / "data"
    env = {
        **os.environ,
        "SKETCHREID_DATA_DIR": str(data),
        "SKETCHREID_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "SKETCHREID_MODEL_DIR": str(bundle_dir),
        "SKETCHREID_BACKEND": "torch",
        "SKETCHREID_SHUTDOWN_TIMEOUT_SECONDS": "2",
        "SKETCHREID_ORPHAN_SWEEP_SECONDS": "0",
        "OMP_NUM_THREADS": "1",
    }
    cli = [sys.executable, "-m", "app.cli.main"]
    subprocess.run([*cli, "db", "upgrade"], cwd=ROOT, env=env, check=True, capture_output=True)
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [*cli, "serve", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    trickle_stop = threading.Event()
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        key = log_path.read_text().split("store it now:\n", 1)[1].split()[0]
        stored = httpx.post(
            f"{base}/api/v1/gallery",
            files={"image": ("a.jpg", jpeg(1), "image/jpeg")},
            headers={"X-API-Key": key},
            timeout=60,
        )
        assert stored.status_code == 201, stored.text

        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(
            (
                f"POST /api/v1/gallery HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
                '--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
            ).encode()
        )

        def trickle() -> None:  # 10 bytes a second: 100 kB would take hours
            while not trickle_stop.wait(1.0):
                try:
                    slow.sendall(b"\xff" * 10)
                except OSError:
                    return

        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(1.5)  # the request is being read
        start = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        took = time.monotonic() - start
    finally:
        trickle_stop.set()
        if server.poll() is None:
            server.kill()
            server.wait()
    log = log_path.read_text()
    assert took < 2 + 15, f"exited {took:.1f} s after SIGTERM\n{log}"
    # uvicorn re-raises the signal once shut down: killed by SIGTERM, after a clean shutdown.
    assert server.returncode in (0, -signal.SIGTERM), log
    assert "timeout graceful shutdown exceeded" in log, log  # the slow upload was cut off
    assert "index saved at shutdown: 1 items" in log, log
    assert "Application shutdown complete" in log, log
