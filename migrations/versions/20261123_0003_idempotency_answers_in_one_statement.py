"""idempotency keys stored with the created row, in the create's own statement

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 00:00:00

Expand only: the release before keeps writing and replaying its keys (it fills `body` with the
rendered answer and leaves `resource` empty), and this release replays those as they are.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Called by a keyed create's ON CONFLICT when the key is still live: it aborts the whole statement,
# row and key alike, with a SQLSTATE of its own, which the service answers by replaying the key.
# VOLATILE, so that it runs only when reached (never folded ahead of the CASE that guards it).
IDEMPOTENCY_KEY_LIVE = """
CREATE FUNCTION idempotency_key_live() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'this Idempotency-Key already has an answer' USING ERRCODE = 'IK409';
END
$$
"""


def upgrade() -> None:
    # The created row's columns as JSON; NULL for keys the release before stored (their `body` is
    # the rendered answer).
    op.add_column("idempotency_keys", sa.Column("resource", postgresql.JSONB(), nullable=True))
    op.execute(IDEMPOTENCY_KEY_LIVE)


def downgrade() -> None:
    op.execute("DROP FUNCTION idempotency_key_live()")
    op.drop_column("idempotency_keys", "resource")
