"""The backends every store test runs on: a SQLite file and a throwaway PostgreSQL database."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatch_runner.store import Store, open_store


class Backend:
    """Opens Store instances on one underlying database (to reopen it, or to act as two peers)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._open: list[Store] = []

    def open(self) -> Store:
        store = open_store(self.url)
        self._open.append(store)
        return store

    def close(self, store: Store) -> None:
        self._open.remove(store)
        store.close()

    def close_all(self) -> None:
        while self._open:
            self.close(self._open[-1])


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        b = Backend(f"sqlite:///{tmp_path / 'state.db'}")
    else:
        b = Backend(request.getfixturevalue("pg_url"))
    yield b
    b.close_all()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()
