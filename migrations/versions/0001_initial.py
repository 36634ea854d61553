"""Initial schema: api_keys, gallery_items, embeddings, searches.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("key_prefix", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("last_used_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        sa.CheckConstraint(
            "role IN ('admin', 'operator', 'investigator')", name="ck_api_keys_role"
        ),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "gallery_items",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("blob_path", sa.String(300), nullable=False),
        sa.Column("content_type", sa.String(50), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("camera_id", sa.String(100), nullable=True),
        sa.Column("captured_at", TS, nullable=True),
        sa.Column("location", sa.String(500), nullable=True),
        sa.Column("external_id", sa.String(200), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column(
            "created_by", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.PrimaryKeyConstraint("id", name="pk_gallery_items"),
        sa.UniqueConstraint("sha256", name="uq_gallery_items_sha256"),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["api_keys.id"],
            name="fk_gallery_items_created_by_api_keys",
            ondelete="SET NULL",
        ),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_gallery_items_camera_id_captured_at", "gallery_items", ["camera_id", "captured_at"]
    )
    op.create_index("ix_gallery_items_external_id", "gallery_items", ["external_id"])
    op.create_table(
        "embeddings",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("item_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_embeddings"),
        sa.UniqueConstraint("item_id", "model_version", name="uq_embeddings_item_id_model_version"),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["gallery_items.id"],
            name="fk_embeddings_item_id_gallery_items",
            ondelete="CASCADE",
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_embeddings_model_version", "embeddings", ["model_version"])
    op.create_table(
        "searches",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "api_key_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("sketch_sha256", sa.String(64), nullable=False),
        sa.Column("sketch_path", sa.String(300), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("translated_image_path", sa.String(300), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_searches"),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name="fk_searches_api_key_id_api_keys",
            ondelete="SET NULL",
        ),
    )
    op.create_index("ix_searches_api_key_id", "searches", ["api_key_id"])


def downgrade() -> None:
    op.drop_index("ix_searches_api_key_id", table_name="searches")
    op.drop_table("searches")
    op.drop_index("ix_embeddings_model_version", table_name="embeddings")
    op.drop_table("embeddings")
    op.drop_index("ix_gallery_items_external_id", table_name="gallery_items")
    op.drop_index("ix_gallery_items_camera_id_captured_at", table_name="gallery_items")
    op.drop_table("gallery_items")
    op.drop_table("api_keys")
