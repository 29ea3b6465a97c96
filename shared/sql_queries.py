"""Named SQL queries kept in ``.sql`` files.

A service's longer queries live in ``services/<name>/queries/*.sql``, each
introduced by a ``-- name: <name>`` line (comments after it describe the
query), and are read once at import::

    Q = load_queries(Path(__file__).parent / "queries" / "invoices.sql")
    await conn.fetchrow(Q.upsert_invoice, invoice_id, ...)

SQL reads as SQL, with ``$1`` parameters, and a misspelt name fails at import
rather than at the first call.
"""

from __future__ import annotations

import re
from pathlib import Path

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


class Queries:
    def __init__(self, queries: dict[str, str], source: str) -> None:
        self._queries = queries
        self._source = source

    def __getattr__(self, name: str) -> str:
        try:
            return self._queries[name]
        except KeyError:
            raise AttributeError(f"{self._source} has no query {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._queries

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._queries)


def load_queries(path: Path) -> Queries:
    text = path.read_text(encoding="utf-8")
    parts = _NAME.split(text)
    # parts: [preamble, name1, body1, name2, body2, ...]
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"{path.name}: query {name} defined twice")
        sql = body.strip()
        if not sql:
            raise ValueError(f"{path.name}: query {name} is empty")
        queries[name] = sql
    if not queries:
        raise ValueError(f"{path.name}: no '-- name:' queries")
    return Queries(queries, path.name)
