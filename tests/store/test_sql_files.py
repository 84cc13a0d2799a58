"""Each backend's SQL lives in its .sql files: named queries (queries.sql) and append-only
migrations (migrations/NNNN.sql). The store's sides (store/sql/) and the backends' cores name
queries; no Python spells SQL. Both backends name the same queries, so the sides run on either."""

import ast
import hashlib
import re
from pathlib import Path

import pytest

from dispatch_runner.store import postgres, sqlite
from dispatch_runner.store import sql as sides
from dispatch_runner.store.sql.queries import Queries, parse_queries
from dispatch_runner.store.sqlite import MIGRATIONS, statements

SIDES = Path(sides.__file__).parent
BACKENDS = {"sqlite": sqlite, "postgres": postgres}
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


def _python_sources(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("*.py"))}


def _names_used(folder: Path, prefix: str) -> set[str]:
    used: set[str] = set()
    for text in _python_sources(folder).values():
        used |= set(re.findall(prefix + r"\.(\w+)", text)) - {"expand", "names", "marks"}
        used |= set(re.findall(prefix + r"\.expand\(\s*\"(\w+)\"", text))
    return used


@pytest.mark.parametrize("name", BACKENDS)
def test_every_named_query_is_used_and_every_used_name_exists(name: str) -> None:
    backend = BACKENDS[name]
    by_sides = _names_used(SIDES, r"\bq")  # db.q.x, self.q.x
    by_core = _names_used(Path(str(backend.__file__)).parent, r"\bQ")
    assert by_sides | by_core == backend.Q.names()


@pytest.mark.parametrize("folder", [SIDES, *(Path(str(b.__file__)).parent for b in BACKENDS.values())])
def test_no_python_of_the_store_spells_sql(folder: Path) -> None:
    for name, text in _python_sources(folder).items():
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
