"""A full disk (issue 24), on a small tmpfs holding DATA_DIR: below MIN_FREE_DISK_MB uploads,
batches and searches are 507 before anything is written and /readyz is not ready; with the
disk truly full (ENOSPC) they are 507 too and leave nothing behind; shutdown logs that the
index could not be saved, without a traceback, and the next start rebuilds it from the
database.

Needs root to mount the tmpfs; skipped otherwise, unless SKETCHREID_REQUIRE_TMPFS=1.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.core.config import Settings
from app.ml.bundle.store import Bundle

from .conftest import Keys, snapshot, upload
from .helpers import jpeg, sketch_png


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,nr_inodes=1000", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs (needs root): {done.stderr.strip()}"
        if os.environ.get("SKETCHREID_REQUIRE_TMPFS") == "1":
            pytest.fail(reason + " (SKETCHREID_REQUIRE_TMPFS=1)")
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path, leave_bytes: int) -> Path:
    """Write a ballast file until at most ``leave_bytes`` are free in ``folder``."""
    ballast = folder / "ballast"
    chunk = b"\0" * 65536
    with open(ballast, "ab") as fh:
        while os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize > leave_bytes:
            free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
            try:
                fh.write(chunk[: max(4096, min(len(chunk), free - leave_bytes))])
                fh.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    return ballast


def _fill_inodes(folder: Path) -> list[Path]:
    """Take every free inode of the tmpfs: bytes stay free (the free-space check passes) but
    creating a file fails with ENOSPC, as on a disk that is really full."""
    made: list[Path] = []
    while True:
        path = folder / f"inode-{len(made)}"
        try:
            path.touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            return made
        made.append(path)


def _assert_507(response: object) -> None:
    assert response.status_code == 507, response.text  # type: ignore[attr-defined]
    assert "disk" in response.json()["detail"]  # type: ignore[attr-defined]
    assert "nothing was stored" in response.json()["detail"]  # type: ignore[attr-defined]


def _search(client: TestClient, keys: Keys) -> object:
    return client.post(
        "/api/v1/search",
        files={"sketch": ("s.png", sketch_png(1), "image/png")},
        headers=keys.investigator,
    )


def _batch(client: TestClient, keys: Keys) -> object:
    return client.post(
        "/api/v1/gallery/batch",
        files=[("images", (f"{i}.jpg", jpeg(50 + i), "image/jpeg")) for i in range(2)],
        headers=keys.operator,
    )


def test_below_the_free_space_threshold_writes_are_507_and_readyz_not_ready(
    small_disk: Path, make_settings: Callable[..., Settings], bundle: Bundle, keys: Keys
) -> None:
    settings = make_settings(DATA_DIR=small_disk / "data", MIN_FREE_DISK_MB=2)
    with TestClient(create_app(settings, bundle=bundle)) as client:
        assert upload(client, keys.operator, jpeg(1)).status_code == 201  # type: ignore[attr-defined]
        assert client.get("/readyz").status_code == 200
        before = snapshot(client)
        _fill(small_disk, 1024 * 1024)  # 1 MB left, 2 MB kept free
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["disk"] is False
        assert ready.json()["checks"]["disk_free_mb"] < 2
        _assert_507(upload(client, keys.operator, jpeg(2)))
        _assert_507(_search(client, keys))
        batch = _batch(client, keys)
        assert batch.status_code == 200  # type: ignore[attr-defined]
        assert [r["http_status"] for r in batch.json()["results"]] == [507, 507]  # type: ignore[attr-defined]
        assert snapshot(client) == before


def test_a_full_disk_is_507_leaves_nothing_and_shutdown_logs_the_rebuild(
    small_disk: Path,
    make_settings: Callable[..., Settings],
    bundle: Bundle,
    keys: Keys,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(DATA_DIR=small_disk / "data", MIN_FREE_DISK_MB=1)
    client = TestClient(create_app(settings, bundle=bundle))
    with client:
        first = upload(client, keys.operator, jpeg(1))
        assert first.status_code == 201  # type: ignore[attr-defined]
        before = snapshot(client)
        ballast = _fill_inodes(small_disk)  # ENOSPC on the next new file
        _assert_507(upload(client, keys.operator, jpeg(2)))
        _assert_507(_search(client, keys))
        assert [r["http_status"] for r in _batch(client, keys).json()["results"]] == [507, 507]  # type: ignore[attr-defined]
        assert snapshot(client) == before
        # An item stored after the last save: the shutdown cannot save the index.
        for path in ballast[:20]:  # room for one more upload...
            path.unlink()
        second = upload(client, keys.operator, jpeg(3))
        assert second.status_code == 201  # type: ignore[attr-defined]
        ballast = ballast[20:] + _fill_inodes(small_disk)  # ...and full again for shutdown
        caplog.clear()
        caplog.set_level(logging.INFO)
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "index not saved at shutdown" in m and "rebuilt from the database" in m for m in messages
    ), messages
    assert not any(r.exc_info for r in caplog.records)
    for path in ballast:
        path.unlink()
    with TestClient(create_app(settings, bundle=bundle)) as client:
        ctx = client.app.state.ctx  # type: ignore[attr-defined]
        assert sorted(ctx.index.ids().tolist()) == sorted(
            [first.json()["id"], second.json()["id"]]  # type: ignore[attr-defined]
        )
        assert client.get("/readyz").status_code == 200
