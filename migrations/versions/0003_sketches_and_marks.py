"""Several sketches per search (searches.sketches) and marks on search results (search_marks).

The single-sketch columns sketch_sha256, sketch_path and translated_image_path become the first
(only) entry of the new JSON list ``sketches`` of every existing search; downgrading puts the
first entry back into them (the other sketches' files stay on disk, unlisted).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)

_searches = sa.table(
    "searches",
    sa.column("id", sa.Uuid()),
    sa.column("sketches", sa.JSON()),
    sa.column("sketch_sha256", sa.String(64)),
    sa.column("sketch_path", sa.String(300)),
    sa.column("translated_image_path", sa.String(300)),
)


def upgrade() -> None:
    with op.batch_alter_table("searches") as batch:
        batch.add_column(sa.Column("sketches", sa.JSON(), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(
            _searches.c.id,
            _searches.c.sketch_sha256,
            _searches.c.sketch_path,
            _searches.c.translated_image_path,
        )
    ).all()
    for search_id, sha256, path, translated in rows:
        conn.execute(
            _searches.update()
            .where(_searches.c.id == search_id)
            .values(sketches=[{"sha256": sha256, "path": path, "translated_path": translated}])
        )
    with op.batch_alter_table("searches") as batch:
        batch.alter_column("sketches", existing_type=sa.JSON(), nullable=False)
        batch.drop_column("sketch_sha256")
        batch.drop_column("sketch_path")
        batch.drop_column("translated_image_path")

    op.create_table(
        "search_marks",
        sa.Column("id", Id, nullable=False),
        sa.Column("search_id", sa.Uuid(), nullable=False),
        sa.Column("gallery_id", Id, nullable=False),
        sa.Column("mark", sa.String(20), nullable=False),
        sa.Column("api_key_id", Id, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_search_marks"),
        sa.CheckConstraint(
            "mark IN ('confirmed', 'rejected', 'none')", name="ck_search_marks_mark"
        ),
        sa.ForeignKeyConstraint(
            ["search_id"],
            ["searches.id"],
            name="fk_search_marks_search_id_searches",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name="fk_search_marks_api_key_id_api_keys",
            ondelete="SET NULL",
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_search_marks_search_id", "search_marks", ["search_id"])


def downgrade() -> None:
    op.drop_index("ix_search_marks_search_id", table_name="search_marks")
    op.drop_table("search_marks")
    with op.batch_alter_table("searches") as batch:
        batch.add_column(sa.Column("sketch_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("sketch_path", sa.String(300), nullable=True))
        batch.add_column(sa.Column("translated_image_path", sa.String(300), nullable=True))
    conn = op.get_bind()
    for search_id, sketches in conn.execute(sa.select(_searches.c.id, _searches.c.sketches)).all():
        first = sketches[0]
        conn.execute(
            _searches.update()
            .where(_searches.c.id == search_id)
            .values(
                sketch_sha256=first["sha256"],
                sketch_path=first["path"],
                translated_image_path=first.get("translated_path"),
            )
        )
    with op.batch_alter_table("searches") as batch:
        batch.alter_column("sketch_sha256", existing_type=sa.String(64), nullable=False)
        batch.alter_column("sketch_path", existing_type=sa.String(300), nullable=False)
        batch.drop_column("sketches")
