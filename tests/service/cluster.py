"""Processes and plumbing of the cluster tests: `sketchreid serve` and `sketchreid worker` as
child processes, a RabbitMQ vhost of their own, and a TCP relay whose cut is a broker outage."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
RABBIT = ("127.0.0.1", 5672)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rabbit_reason() -> str | None:
    """Why the machine's RabbitMQ cannot be used, or None."""
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed (RabbitMQ is needed for the cluster tests)"
    try:
        socket.create_connection(RABBIT, timeout=2).close()
    except OSError as exc:
        return f"RabbitMQ unreachable at {RABBIT[0]}:{RABBIT[1]}: {exc}"
    return None


@contextlib.contextmanager
def rabbit_vhost() -> Iterator[str]:
    """A vhost of this test run on the machine's RabbitMQ; yields its amqp:// URL."""
    name = f"sketchreid-test-{uuid.uuid4().hex[:10]}"
    run = ["rabbitmqctl", "-q"]
    subprocess.run([*run, "add_vhost", name], check=True, capture_output=True, timeout=300)
    try:
        subprocess.run(
            [*run, "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=300,
        )
        yield f"amqp://guest:guest@{RABBIT[0]}:{RABBIT[1]}/{name}"
    finally:
        subprocess.run([*run, "delete_vhost", name], capture_output=True, timeout=300)


class Relay:
    """A TCP relay to RabbitMQ on a port of its own; :meth:`cut` closes the port and every
    connection through it (the broker is gone for whoever uses the relay), :meth:`restore`
    opens the same port again."""

    def __init__(self, target: tuple[str, int] = RABBIT) -> None:
        self.target = target
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._listener is not None:
            # shutdown wakes the thread blocked in accept(); close alone would leave the port
            # accepting until that call returns
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


class Child:
    """A `sketchreid` command in a child process, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli.main", *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def wait_for(what: str, check: object, timeout: float, children: list[Child]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        for child in children:
            if not child.alive():
                raise AssertionError(
                    f"{child.name} exited while waiting for {what}:\n" + child.text()[-3000:]
                )
        time.sleep(0.05)
    logs = "\n".join(f"--- {c.name}\n{c.text()[-1500:]}" for c in children)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
