from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from app.core.config import Settings, load_settings
from app.db import migrate
from app.db.models import Base
from app.db.session import make_engine
from app.errors import SketchReidError


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SKETCHREID_DATABASE_URL", raising=False)
    monkeypatch.setenv("SKETCHREID_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SKETCHREID_INDEX_TYPE", "hnsw")
    settings = Settings()
    assert f"sqlite:///{tmp_path / 'sketchreid.db'}" == settings.DATABASE_URL
    assert settings.INDEX_TYPE == "hnsw"
    assert settings.max_upload_bytes == 20 * 1024 * 1024
    assert settings.RERANK_CANDIDATES == 100


def test_bad_values_are_person_readable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKETCHREID_INDEX_TYPE", "annoy")
    with pytest.raises(SketchReidError, match="INDEX_TYPE"):
        load_settings()


def test_production_refuses_unsafe_defaults(tmp_path: Path) -> None:
    with pytest.raises(SketchReidError, match="PostgreSQL"):
        load_settings(ENV="production", DATA_DIR=tmp_path)
    with pytest.raises(SketchReidError, match="absolute"):
        load_settings(
            ENV="production", DATA_DIR="var", DATABASE_URL="postgresql+psycopg://u:p@db/x"
        )
    ok = load_settings(
        ENV="production", DATA_DIR=tmp_path, DATABASE_URL="postgresql+psycopg://u:p@db/x"
    )
    assert ok.ENV == "production"


def test_migrations_match_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
    finally:
        engine.dispose()
    assert diff == []


def test_existing_keys_survive_0005_and_its_downgrade(database_url: str) -> None:
    """0005 adds api_keys.created_by / revoked_by (SQLite recreates the table): the keys, their
    role check and the columns' links to api_keys stay; downgrading takes the columns away."""
    config = migrate.alembic_config(database_url)
    command.downgrade(config, "0004")
    engine = make_engine(database_url)
    insert = sa.text(
        "INSERT INTO api_keys (id, name, role, key_hash, key_prefix, created_at) "
        "VALUES (:id, :name, :role, :hash, 'skr_x', '2025-01-01 00:00:00')"
    )
    try:
        with engine.begin() as conn:
            conn.execute(insert, {"id": 7, "name": "old desk", "role": "operator", "hash": "a"})
        command.upgrade(config, "0005")
        with engine.begin() as conn:
            row = conn.execute(
                sa.text("SELECT id, name, role, created_by, revoked_by FROM api_keys")
            ).one()
            assert tuple(row) == (7, "old desk", "operator", None, None)
            conn.execute(sa.text("UPDATE api_keys SET revoked_by = 7, created_by = 7"))
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(insert, {"id": 8, "name": "x", "role": "root", "hash": "b"})
        links = {
            (tuple(fk["constrained_columns"]), fk["referred_table"], fk["options"].get("ondelete"))
            for fk in sa.inspect(engine).get_foreign_keys("api_keys")
        }
        assert links == {
            (("created_by",), "api_keys", "SET NULL"),
            (("revoked_by",), "api_keys", "SET NULL"),
        }
        command.downgrade(config, "0004")
        columns = {c["name"] for c in sa.inspect(engine).get_columns("api_keys")}
        assert {"created_by", "revoked_by"}.isdisjoint(columns) and "expires_at" in columns
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT name FROM api_keys")).scalar_one() == "old desk"
            conn.execute(sa.text("DELETE FROM api_keys"))
    finally:
        command.upgrade(config, "head")
        engine.dispose()


def test_searches_survive_0007_and_its_downgrade(database_url: str) -> None:
    """0007 adds searches.case_id (SQLite recreates the table) and the casework tables:
    existing searches stay, in no case; downgrading takes the tables and the column away."""
    config = migrate.alembic_config(database_url)
    command.downgrade(config, "0006")
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO searches (id, created_at, sketches, parameters, results, "
                    "model_name, model_version) VALUES ('0b8f6a3e2c5d4e1f9a7b6c5d4e3f2a1b', "
                    "'2025-01-01 00:00:00', '[]', '{}', '[]', 'm', '1')"
                )
            )
        command.upgrade(config, "0007")
        tables = set(sa.inspect(engine).get_table_names())
        assert {"cases", "notes", "watchlists", "alerts"} <= tables
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT model_name, case_id FROM searches")).one() == (
                "m",
                None,
            )
        command.downgrade(config, "0006")
        tables = set(sa.inspect(engine).get_table_names())
        assert {"cases", "notes", "watchlists", "alerts"}.isdisjoint(tables)
        assert "case_id" not in {c["name"] for c in sa.inspect(engine).get_columns("searches")}
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM searches")).scalar_one() == 1
            conn.execute(sa.text("DELETE FROM searches"))
    finally:
        command.upgrade(config, "head")
        engine.dispose()
