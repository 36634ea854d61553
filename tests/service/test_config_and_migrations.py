from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from app.core.config import Settings, load_settings
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
