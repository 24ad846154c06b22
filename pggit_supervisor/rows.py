"""The one row of a query that always returns one: an aggregate, a function call, a catalog
row that must exist."""

from __future__ import annotations

from typing import Any

from psycopg2.extensions import cursor


def one_row(cur: cursor) -> tuple[Any, ...]:
    """The row the cursor's last query returned. None would mean the query is not the one we
    wrote, a bug: say so here rather than as a TypeError on None[0]. The query's text is left
    out of the message: its parameters may include a claim token."""
    row = cur.fetchone()
    if row is None:
        raise LookupError("a query that always returns one row returned none")
    return row
