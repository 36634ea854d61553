"""A real ``sketchreid serve`` process for the reliability benchmarks (fuzz, crash, load).

Each benchmark gets a throw-away data folder and database (SQLite in that folder, or a fresh
PostgreSQL database dropped afterwards), runs the migrations and makes API keys with the
command line, then starts the server as a child process on a free port. ``kill()`` sends
SIGKILL, which is what the crash trials need; ``stop()`` asks politely.

The server inherits this process's environment. ``OMP_NUM_THREADS`` is 1 unless that environment
sets it or ``threads`` says otherwise (``None``: left unset, so the server's libraries pick their
thread counts exactly as this process's did).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get(
    "SKETCHREID_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@contextlib.contextmanager
def temp_database(kind: str, folder: Path) -> Iterator[str]:
    """A database URL: ``sqlite`` (a file in ``folder``) or ``postgres`` (a new database on
    ``SKETCHREID_TEST_POSTGRES_URL``'s server, dropped on exit)."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'sketchreid.db'}"
        return
    if kind != "postgres":
        raise ValueError(f"unknown database kind {kind!r} (sqlite or postgres)")
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(PG_ADMIN_URL)
    name = f"sketchreid_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    conn = psycopg.connect(
        host=admin.host or "127.0.0.1",
        port=admin.port or 5432,
        user=admin.username or "postgres",
        dbname=admin.database or "postgres",
        password=admin.password,
        autocommit=True,
    )
    conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """``sketchreid`` commands and one ``serve`` process against ``data_dir`` + ``database_url``."""

    data_dir: Path
    database_url: str
    model_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    threads: str | None = "1"  # OMP_NUM_THREADS when the environment has none
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "SKETCHREID_DATA_DIR": str(self.data_dir),
                "SKETCHREID_DATABASE_URL": self.database_url,
                "SKETCHREID_MODEL_DIR": str(self.model_dir),
            }
        )
        if self.threads is not None:
            env.setdefault("OMP_NUM_THREADS", self.threads)
        env.update(self.extra_env)
        return env

    def cli(self, *args: str) -> str:
        """Run ``sketchreid ARGS``; its standard output (raises on failure)."""
        done = subprocess.run(
            [sys.executable, "-m", "app.cli.main", *args],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"sketchreid {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout

    def migrate(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.cli("db", "upgrade")

    def create_key(self, role: str, name: str | None = None) -> str:
        return self.cli("apikey", "create", "--role", role, "--name", name or role).split()[-1]

    def start(self, timeout: float = 300.0) -> None:
        """Start ``serve`` and wait until /readyz answers 200 (the model loads first)."""
        self.log_path = self.data_dir / f"server-{self.port}.log"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli.main", "serve", "--port", str(self.port),
             "--log-level", "warning"],
            cwd=ROOT,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/readyz", timeout=5).status_code == 200:
                    return
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"server not ready after {timeout:.0f} s: {self.log()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut or the OOM killer."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-4000:]


_REQUESTS = re.compile(
    r'^sketchreid_http_requests_total\{method="([^"]*)",route="([^"]*)",status="([^"]*)"\} (\S+)$'
)


def request_counts(base_url: str) -> dict[tuple[str, str, str], int]:
    """The requests the server has counted since it started (its /metrics), by
    (method, route template, status)."""
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    counts: dict[tuple[str, str, str], int] = {}
    for line in text.splitlines():
        if match := _REQUESTS.match(line):
            method, route, status, value = match.groups()
            counts[(method, route, status)] = int(float(value))
    return counts


def server_errors(base_url: str) -> int:
    """Responses with a 5xx status the server has counted since it started (its /metrics)."""
    return sum(n for (_, _, status), n in request_counts(base_url).items() if status[0] == "5")
