"""`sketchreid db upgrade`, `apikey create|list|revoke`, `ingest DIR`, serve's first key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli.main import main
from app.cli.service_cmd import initial_admin_key
from app.core.config import get_settings
from app.db.session import make_engine, make_session_factory, session_scope
from app.services import apikeys
from app.services.errors import AuthenticationError

from .helpers import jpeg, png


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, bundle_dir: Path
) -> Iterator[Path]:
    data = tmp_path / "data"
    monkeypatch.setenv("SKETCHREID_DATA_DIR", str(data))
    monkeypatch.setenv("SKETCHREID_DATABASE_URL", database_url)
    monkeypatch.setenv("SKETCHREID_MODEL_DIR", str(bundle_dir))
    get_settings.cache_clear()
    yield data
    get_settings.cache_clear()


def test_apikey_create_list_revoke(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apikey", "create", "--role", "operator", "--name", "ingest bot"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("skr_")
    settings = get_settings()
    engine = make_engine(settings.DATABASE_URL)
    with session_scope(make_session_factory(engine)) as session:
        row = apikeys.authenticate(session, key)
        assert row.role == "operator"
    assert main(["apikey", "list"]) == 0
    listing = capsys.readouterr().out
    assert "ingest bot" in listing and "active" in listing and key not in listing
    assert main(["apikey", "revoke", str(row.id)]) == 0
    assert "revoked" in capsys.readouterr().out
    with (
        session_scope(make_session_factory(engine)) as session,
        pytest.raises(AuthenticationError, match="revoked"),
    ):
        apikeys.authenticate(session, key)
    engine.dispose()
    assert main(["apikey", "revoke", "999"]) == 2
    assert "999 does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["apikey", "create", "--role", "root", "--name", "x"])


def test_apikey_create_with_an_expiry(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["apikey", "create", "--role", "investigator", "--name", "visitor"]
    assert main([*argv, "--expires-in-days", "30"]) == 0
    out = capsys.readouterr().out
    assert ", expires 20" in out.splitlines()[0] and out.strip().splitlines()[-1].startswith("skr_")
    assert main(["apikey", "list"]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.endswith("visitor")]
    assert "never" not in line and " active " in line
    assert main([*argv, "--expires-in-days", "0"]) == 2
    assert "expires_in_days must be 1 to 3650" in capsys.readouterr().err


def test_first_serve_prints_an_admin_key_once(env: Path) -> None:
    key = initial_admin_key(get_settings())
    assert key is not None and key.startswith("skr_")
    assert initial_admin_key(get_settings()) is None


def test_serve_prints_the_page_then_the_admin_key_last(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a newcomer reads after `make run`: where the web page is, then (first start
    only) the admin key as the last line, for `| tail -1`."""
    served: list[dict[str, object]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: served.append(kw))
    assert main(["serve", "--port", "8765"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert served and served[0]["port"] == 8765
    assert any(line.startswith("The web page: http://127.0.0.1:8765/ ") for line in lines)
    assert "http://127.0.0.1:8765/docs" in "\n".join(lines)
    assert lines[-1].startswith("skr_")
    assert main(["serve", "--port", "8765"]) == 0  # a second start: no new key
    again = capsys.readouterr().out.strip().splitlines()
    assert again[-1].startswith("The web page:") and not any("skr_" in x for x in again)


def test_ingest_folder_is_resumable(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "crops"
    (folder / "sub").mkdir(parents=True)
    (folder / "0001_c1s1_000151_01.jpg").write_bytes(jpeg(1))
    (folder / "0002_c4s2_000001_01.png").write_bytes(png(2))
    (folder / "0005_c1s1_000005_01.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    (folder / "sub" / "0003_c2s1_000001_01.jpg").write_bytes(jpeg(3))

    code = main(["ingest", str(folder), "--camera-from-filename", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1  # one bad file
    assert "ingested 2 new, 0 already stored, 1 failed (of 3 image files" in out
    assert "1 non-image file(s) ignored" in out
    assert "0005_c1s1_000005_01.jpg" in err and "not an image" in err

    code = main(["ingest", str(folder), "--recursive", "--camera-from-filename", "--no-progress"])
    out, _ = capsys.readouterr()
    assert "ingested 1 new, 2 already stored, 1 failed (of 4 image files" in out

    (folder / "0005_c1s1_000005_01.jpg").unlink()
    assert main(["ingest", str(folder), "--recursive", "--no-progress"]) == 0
    assert "ingested 0 new, 3 already stored, 0 failed" in capsys.readouterr().out

    from app.services.context import close_context, open_context
    from app.services.gallery import list_items

    ctx = open_context(get_settings())
    try:
        assert ctx.index_status["source"] == "file" and len(ctx.index) == 3
        with session_scope(ctx.sessions) as session:
            items, total = list_items(session)
            assert total == 3
            assert sorted(i.camera_id or "" for i in items) == ["c1", "c2", "c4"]
    finally:
        close_context(ctx)


def test_ingest_refuses_a_name_without_a_camera(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--camera-from-filename follows the API's rule: a name that holds no camera is refused
    with the reason, not stored without a camera; a --camera-id given for every file wins."""
    folder = tmp_path / "crops"
    folder.mkdir()
    (folder / "0001_c1s1_000151_01.jpg").write_bytes(jpeg(1))
    (folder / "999_04_1234.png").write_bytes(png(2))

    assert main(["ingest", str(folder), "--camera-from-filename", "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert "ingested 1 new, 0 already stored, 1 failed (of 2 image files" in out
    assert "999_04_1234.png" in err and "the name holds no camera" in err

    args = ["ingest", str(folder), "--camera-from-filename", "--camera-id", "c9", "--no-progress"]
    assert main(args) == 0
    assert "ingested 1 new, 1 already stored, 0 failed" in capsys.readouterr().out

    from app.services.context import close_context, open_context
    from app.services.gallery import list_items

    ctx = open_context(get_settings())
    try:
        with session_scope(ctx.sessions) as session:
            items, total = list_items(session)
            assert total == 2 and len(ctx.index) == 2
            assert sorted(i.camera_id or "" for i in items) == ["c1", "c9"]
    finally:
        close_context(ctx)


def test_ingest_missing_folder(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", "/nonexistent/folder"]) == 2
    assert "folder not found" in capsys.readouterr().err


def test_db_upgrade_and_refusal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKETCHREID_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SKETCHREID_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        assert main(["apikey", "list"]) == 2
        assert "run `sketchreid db upgrade`" in capsys.readouterr().err
        assert main(["db", "current"]) == 1
        assert main(["db", "upgrade"]) == 0
        assert "head" in capsys.readouterr().out
        assert main(["db", "upgrade"]) == 0  # idempotent
        assert main(["db", "current"]) == 0
        assert (tmp_path / "sketchreid.db").is_file()
    finally:
        get_settings.cache_clear()


def test_apikey_revoke_keeps_the_last_admin_unless_forced(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["apikey", "create", "--role", "admin", "--name", "only admin"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    engine = make_engine(get_settings().DATABASE_URL)
    with session_scope(make_session_factory(engine)) as session:
        key_id = apikeys.authenticate(session, key).id
    assert main(["apikey", "revoke", str(key_id)]) == 2
    err = capsys.readouterr().err
    assert "last active admin key" in err
    with session_scope(make_session_factory(engine)) as session:
        assert apikeys.authenticate(session, key).revoked_at is None
    assert main(["apikey", "revoke", "--force", str(key_id)]) == 0
    assert "revoked" in capsys.readouterr().out
    with (
        session_scope(make_session_factory(engine)) as session,
        pytest.raises(AuthenticationError, match="revoked"),
    ):
        apikeys.authenticate(session, key)
    engine.dispose()


def test_serve_migrate_upgrades_a_new_database_in_the_same_process(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    bundle_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The container's start: `serve --migrate` on an empty database migrates it to head and
    serves; plain `serve` refuses that database, saying what to run."""
    monkeypatch.setenv("SKETCHREID_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SKETCHREID_DATABASE_URL", f"sqlite:///{tmp_path / 'new.sqlite'}")
    monkeypatch.setenv("SKETCHREID_MODEL_DIR", str(bundle_dir))
    get_settings.cache_clear()
    served: list[dict[str, object]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: served.append(kw))
    try:
        assert main(["serve"]) == 2
        assert "run `sketchreid db upgrade`" in capsys.readouterr().err and not served
        assert main(["serve", "--migrate"]) == 0
        out = capsys.readouterr().out.splitlines()
        from app.db import migrate

        assert out[0] == f"database at revision {migrate.head_revision()} (head)"
        assert served and out[-1].startswith("skr_")  # served, on a database with keys
    finally:
        get_settings.cache_clear()
