"""What the sides of a SQL store need from a driver: a connection that runs one named query with
its parameters, and rows readable by position and by column name (sqlite3.Row; psycopg rows
through postgres/core.py's row factory)."""

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from .queries import Queries


class Row(Protocol):
    def __getitem__(self, key: int | str, /) -> Any: ...
    def keys(self) -> Sequence[str]: ...


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Driver(Protocol):
    def execute(self, sql: str, args: Sequence[Any] = ..., /) -> Any: ...


class Conn:
    """One connection inside one transaction (or one read), with its backend's named queries."""

    __slots__ = ("q", "raw")

    def __init__(self, raw: Driver, q: Queries) -> None:
        self.raw = raw
        self.q = q

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        cursor: Cursor = self.raw.execute(sql, args)
        return cursor
