"""Holding a row for the rest of a transaction, on PostgreSQL and SQLite alike."""

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import InstrumentedAttribute, Session


def lock_row(session: Session, column: InstrumentedAttribute[Any], row_id: str) -> None:
    """Hold the row whose id is ``row_id`` (in ``column``'s table) until this transaction ends,
    so that what the transaction reads next cannot change under it. PostgreSQL: SELECT ... FOR
    UPDATE, which also waits for the KEY SHARE lock of an INSERT whose foreign key names the
    row. SQLite has one writer at a time: a write that sets ``column`` to itself takes it."""
    table = column.class_
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(table).where(table.id == row_id).values({column: column}))
    else:
        session.execute(select(table.id).where(table.id == row_id).with_for_update())
