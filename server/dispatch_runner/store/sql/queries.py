"""A backend's SQL, read once from the files beside it (procrastinate keeps its SQL the same
way): named queries in queries.sql, numbered migrations in migrations/NNNN.sql. Every backend
names its queries alike, so the sides (queue.py, runs.py, …) run on any of them.

queries.sql holds blocks headed `-- name: <name>`; other comment lines are documentation. A few
queries carry a `{marker}` that `Q.expand` fills (an `IN (?,?,…)` list, an optional filter).
Migrations are append-only: a released step is never edited, the next change is the next file.
"""

import re
from collections.abc import Mapping
from pathlib import Path

_NAME = re.compile(r"^-- name: (\w+)[ \t]*$", re.MULTILINE)
_MARKER = re.compile(r"\{(\w+)\}")
_MIGRATION = re.compile(r"(\d{4})\.sql")


def parse_queries(text: str) -> dict[str, str]:
    """`-- name: x` blocks to {name: SQL}: full-line comments dropped, a final `;` removed."""
    head, *blocks = _NAME.split(text)
    if _sql_lines(head):
        raise ValueError("queries.sql: SQL before the first `-- name:` line")
    queries: dict[str, str] = {}
    for name, body in zip(blocks[::2], blocks[1::2], strict=True):
        sql = "\n".join(_sql_lines(body)).strip().removesuffix(";").rstrip()
        if not sql or name in queries or name.startswith("_") or hasattr(Queries, name):
            raise ValueError(f"queries.sql: query {name!r} is empty, repeated or a reserved name")
        queries[name] = sql
    return queries


def _sql_lines(block: str) -> list[str]:
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("--")]


class Queries:
    """The named queries: `q.lane_head` is the SQL of `-- name: lane_head`; `placeholder` is the
    driver's parameter mark (`?` for sqlite3, `%s` for psycopg)."""

    def __init__(self, sql: Mapping[str, str], *, placeholder: str = "?") -> None:
        self.__dict__.update(sql)  # a plain attribute: the hot paths read one per statement
        self._names = frozenset(sql)
        self._placeholder = placeholder

    def __getattr__(self, name: str) -> str:  # only reached for a name the file does not have
        raise AttributeError(f"no query named {name!r} in queries.sql")

    def expand(self, name: str, **parts: str) -> str:
        """The query with its `{marker}`s filled from `parts` (every marker, nothing else)."""
        sql: str = getattr(self, name)
        if set(_MARKER.findall(sql)) != set(parts):
            raise KeyError(f"query {name!r} has markers {_MARKER.findall(sql)}, got {sorted(parts)}")
        return _MARKER.sub(lambda m: parts[m[1]], sql)

    def names(self) -> frozenset[str]:
        return self._names

    def marks(self, n: int) -> str:
        """`?,?,…`: the placeholders of an `IN ({ids})` list of n values."""
        return ",".join([self._placeholder] * n)


def load_migrations(folder: Path) -> tuple[str, ...]:
    """migrations/0001.sql, 0002.sql, …: numbered from 1, no gaps."""
    found = {int(m[1]): p for p in folder.iterdir() if (m := _MIGRATION.fullmatch(p.name))}
    if sorted(found) != list(range(1, len(found) + 1)):
        raise ValueError(f"migrations: expected 0001.sql … {len(found):04}.sql, found {sorted(found)}")
    return tuple(found[n].read_text(encoding="utf-8") for n in sorted(found))


def load_queries(folder: Path, *, placeholder: str) -> Queries:
    return Queries(
        parse_queries((folder / "queries.sql").read_text(encoding="utf-8")), placeholder=placeholder
    )
