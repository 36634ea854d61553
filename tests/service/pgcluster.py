"""A private PostgreSQL cluster for outage tests: started by the test in a temporary folder on
its own port, stopped with ``pg_ctl stop -m immediate`` (a crash) and frozen with SIGSTOP
(a stall) — never the machine's own server.

The binaries come from ``SKETCHREID_TEST_PG_BIN`` or the newest ``/usr/lib/postgresql/*/bin``.
As root the cluster runs as the ``postgres`` system user (PostgreSQL refuses root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil


def find_bin() -> Path | None:
    """A folder holding initdb and pg_ctl, or None."""
    configured = os.environ.get("SKETCHREID_TEST_PG_BIN")
    candidates = [configured] if configured else []
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True
    )
    for folder in candidates:
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateCluster:
    """One PostgreSQL cluster in a temporary folder, listening on 127.0.0.1:<free port>."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="sketchreid-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-o", options,
            "start",
        )  # fmt: skip

    def stop_immediate(self) -> None:
        """A crash: no checkpoint, clients cut off; the next start replays the WAL."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def _processes(self) -> list[psutil.Process]:
        pid_file = self.data / "postmaster.pid"
        if not pid_file.is_file():
            return []
        postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
        return [postmaster, *postmaster.children(recursive=True)]

    def freeze(self, at_most_s: float = 60.0) -> None:
        """A stall: every process of the cluster stopped (SIGSTOP); connections stay open and
        the kernel still accepts new ones, but nothing answers. Thawed after ``at_most_s``
        whatever happens, so that a client with no timeout fails its test instead of hanging
        it for good."""
        for process in self._processes():
            # a backend that ended since the listing (a cancelled statement's) is no loss
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGSTOP)
        self._thaw_timer = threading.Timer(at_most_s, self.thaw)
        self._thaw_timer.daemon = True
        self._thaw_timer.start()

    def thaw(self) -> None:
        timer = getattr(self, "_thaw_timer", None)
        if timer is not None:
            timer.cancel()
        for process in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        try:
            self.thaw()
            if (self.data / "postmaster.pid").is_file():
                self.stop_immediate()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("the private PostgreSQL cluster did not come back")
