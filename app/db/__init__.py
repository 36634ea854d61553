"""The service database: SQLAlchemy 2 models, engine/session helpers, Alembic migrations."""
