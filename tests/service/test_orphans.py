"""Files that no row references (a process killed between writing an image and committing
its row) are removed: at start-up, periodically and by `sketchreid sweep-orphans`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.cli.main import main
from app.core.config import Settings, get_settings
from app.ml.bundle.store import Bundle
from app.services.blobs import BlobStore, sha256_hex

from .conftest import Keys, snapshot, upload
from .helpers import jpeg, sketch_png

REPO = Path(__file__).resolve().parents[2]

KILLED_WHILE_INGESTING = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from sqlalchemy.orm import Session
    from app.core.config import load_settings
    from app.db.session import session_scope
    from app.services import gallery
    from app.services.context import open_context

    data_dir, url, model_dir, image = sys.argv[1:5]
    settings = load_settings(
        DATA_DIR=data_dir, DATABASE_URL=url, MODEL_DIR=model_dir, INDEX_SYNC_SECONDS=0
    )
    ctx = open_context(settings)

    commit = Session.commit

    def killed(self):  # SIGKILL after the blob is written, before the row is committed
        if any(type(o).__name__ == "GalleryItem" for o in self.identity_map.values()):
            os.kill(os.getpid(), signal.SIGKILL)
        return commit(self)  # the ones that only give the connection back (release)

    Session.commit = killed
    with session_scope(ctx.sessions) as session:
        gallery.ingest_image(ctx, session, Path(image).read_bytes())
    """
)


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_blob_of_an_ingest_killed_before_commit_is_removed_at_start(
    make_settings: Callable[..., Settings], bundle: Bundle, keys: Keys, tmp_path: Path
) -> None:
    settings = make_settings(ORPHAN_MIN_AGE_SECONDS=0)
    with TestClient(create_app(settings, bundle=bundle)) as client:
        kept = upload(client, keys.operator, jpeg(1)).json()
    image = tmp_path / "crop.jpg"
    image.write_bytes(jpeg(2))
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_WHILE_INGESTING,
            str(settings.DATA_DIR),
            settings.DATABASE_URL,
            str(settings.MODEL_DIR),
            str(image),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr
    blobs = BlobStore(settings.blob_dir)
    orphan = blobs.path(blobs.relative_path(sha256_hex(jpeg(2)), "jpg"))
    assert orphan.is_file()  # written, never committed: no row, no API can delete it

    with TestClient(create_app(settings, bundle=bundle)) as client:
        state = snapshot(client)
        assert not orphan.exists()
        assert state["items"] == 1 and state["blobs"] == [f"{kept['sha256']}.jpg"]
        assert client.get(kept["image_url"], headers=keys.admin).content == jpeg(1)


def test_sweep_spares_files_younger_than_the_in_flight_window(
    make_settings: Callable[..., Settings], bundle: Bundle, keys: Keys
) -> None:
    settings = make_settings(ORPHAN_MIN_AGE_SECONDS=600)
    with TestClient(create_app(settings, bundle=bundle)) as client:
        kept = upload(client, keys.operator, jpeg(1)).json()
        search = client.post(
            "/api/v1/search",
            files={"sketch": ("s.png", sketch_png(1), "image/png")},
            headers=keys.investigator,
        ).json()
    blobs = BlobStore(settings.blob_dir)
    kept_path = blobs.path(blobs.relative_path(kept["sha256"], "jpg"))
    _age(kept_path, 3600)  # old but referenced: stays
    young, old = jpeg(3), jpeg(4)
    young_path = blobs.path(blobs.put(sha256_hex(young), "jpg", young)[0])
    old_path = blobs.path(blobs.put(sha256_hex(old), "jpg", old)[0])
    _age(old_path, 3600)
    old_tmp = old_path.parent / f".{old_path.name}.abc123.tmp"  # an interrupted atomic write
    old_tmp.write_bytes(b"partial")
    _age(old_tmp, 3600)
    search_dir = settings.search_dir
    kept_search = search_dir / search["search_id"]
    _age(kept_search, 3600)
    stray_search = search_dir / str(uuid.uuid4())  # a search killed before its commit
    stray_search.mkdir()
    (stray_search / "sketch.png").write_bytes(sketch_png(2))
    _age(stray_search, 3600)
    young_search = search_dir / str(uuid.uuid4())
    young_search.mkdir()

    with TestClient(create_app(settings, bundle=bundle)) as client:
        assert client.get(kept["image_url"], headers=keys.admin).status_code == 200
    assert kept_path.is_file() and young_path.is_file()
    assert not old_path.exists() and not old_tmp.exists()
    assert kept_search.is_dir() and young_search.is_dir() and not stray_search.exists()


def test_storing_an_existing_blob_again_marks_it_fresh(tmp_path: Path) -> None:
    """A blob left by a crash that a new upload of the same bytes re-uses is fresh again, so
    a sweep running while that upload commits does not take it away."""
    blobs = BlobStore(tmp_path)
    data = jpeg(5)
    relative, new = blobs.put(sha256_hex(data), "jpg", data)
    assert new
    _age(blobs.path(relative), 3600)
    assert blobs.put(sha256_hex(data), "jpg", data) == (relative, False)
    assert time.time() - blobs.path(relative).stat().st_mtime < 600


def test_sweep_command(
    make_settings: Callable[..., Settings],
    bundle: Bundle,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings()
    with TestClient(create_app(settings, bundle=bundle)) as client:
        upload(client, keys.operator, jpeg(1))
    blobs = BlobStore(settings.blob_dir)
    orphan = jpeg(6)
    path = blobs.path(blobs.put(sha256_hex(orphan), "jpg", orphan)[0])
    monkeypatch.setenv("SKETCHREID_DATA_DIR", str(settings.DATA_DIR))
    monkeypatch.setenv("SKETCHREID_DATABASE_URL", settings.DATABASE_URL)
    get_settings.cache_clear()
    try:
        assert main(["sweep-orphans"]) == 0  # default window: the fresh file stays
        assert path.is_file()
        assert main(["sweep-orphans", "--min-age", "0"]) == 0
        assert not path.exists()
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr().out
    assert "removed 1 image file" in out
