"""The SQLite backend's SQL lives in its .sql files: named queries (queries.sql) and append-only
migrations (migrations/NNNN.sql). The Python names queries; it spells no SQL of its own."""

import ast
import hashlib
import re
from pathlib import Path

import pytest

from dispatch_runner.store import sqlite as backend
from dispatch_runner.store.sqlite.sql import MIGRATIONS, Q, Queries, parse_queries, statements

PACKAGE = Path(backend.__file__).parent
# sha256 of the statements each released migration runs: a released step is never edited
RELEASED = {
    1: "cc956f3b3cf2d8d14bb36f60da432759af2d2cf7a0c2e3a8a85176a07daa6431",
    2: "f3f46b515a6a626f609016233611832529fdc57864b438a450a88326ca2b47db",
    3: "6cbfe55cccc5f0f0f24e99f0abd4ead85322da0da99c29eb90555d2429b701a5",
    4: "c2975d5d4f86841cedf5b24613c6ad9ffe40b378e5f82ccb6deebc74b27a38e4",
}
SQL_START = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|PRAGMA|BEGIN|COMMIT|ROLLBACK|CREATE|ALTER|WITH)\b")


def test_released_migrations_run_exactly_the_statements_they_always_ran() -> None:
    assert len(MIGRATIONS) >= len(RELEASED)
    for number, digest in RELEASED.items():
        ran = "\n\n".join(statements(MIGRATIONS[number - 1]))
        assert hashlib.sha256(ran.encode()).hexdigest() == digest, f"migrations/{number:04}.sql changed"


def _python_sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(PACKAGE.glob("*.py"))}


def test_every_named_query_is_used_and_every_used_name_exists() -> None:
    used: set[str] = set()
    for text in _python_sources().values():
        used |= set(re.findall(r"\bQ\.(\w+)", text)) - {"expand", "names"}
        used |= set(re.findall(r"\bQ\.expand\(\s*\"(\w+)\"", text))
    assert used == Q.names()


def test_the_backend_python_spells_no_sql() -> None:
    for name, text in _python_sources().items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not SQL_START.match(node.value), (
                    f"{name}:{node.lineno} has SQL: move it to queries.sql"
                )


def test_a_named_query_is_its_sql_without_comments_or_final_semicolon() -> None:
    text = (
        "-- header\n\n-- name: one\n-- what it does\nSELECT 1\n  FROM t;\n\n-- name: two\nPRAGMA x = {n};\n"
    )
    queries = Queries(parse_queries(text))
    assert queries.one == "SELECT 1\n  FROM t"
    assert queries.expand("two", n="3") == "PRAGMA x = 3"
    with pytest.raises(KeyError):
        queries.expand("two")
    with pytest.raises(AttributeError, match="no query named 'three'"):
        _ = queries.three


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1;\n-- name: one\nSELECT 2;\n",  # SQL outside any named block
        "-- name: one\nSELECT 1;\n-- name: one\nSELECT 2;\n",  # a name twice
        "-- name: one\n-- nothing but a comment\n",  # an empty query
        "-- name: expand\nSELECT 1;\n",  # a name Queries itself uses
    ],
)
def test_a_malformed_queries_file_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"queries\.sql"):
        parse_queries(text)
