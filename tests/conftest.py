"""Shared fixtures: a store on SQLite and on a real PostgreSQL server.

``store`` is parametrized over both backends, so a test written once runs on each. The
PostgreSQL side needs a server: ``eval "$(scripts/postgres.sh)"`` starts the project's own and
exports ``WORKBENCH_PG_URL``. Without one the PostgreSQL cases are skipped, with the reason,
unless ``WORKBENCH_REQUIRE_PG=1`` (CI sets it), when they fail instead: CI cannot go green
without having run them.

Environment read here:
- ``WORKBENCH_PG_URL``: the server (default: the URL ``scripts/postgres.sh`` prints).
- ``WORKBENCH_REQUIRE_PG=1``: a missing server is an error, not a skip.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:54329/workbench"
BACKENDS = ["sqlite", "postgresql"]


def _pg_required() -> bool:
    return os.environ.get("WORKBENCH_REQUIRE_PG", "").strip() not in ("", "0", "false", "no")


def _pg_problem(url: str) -> str | None:
    """``None`` when the server answers, else why not."""
    try:
        import psycopg
        import sqlalchemy as sa
    except ImportError as exc:  # pragma: no cover - both are dependencies
        return f"psycopg/SQLAlchemy missing: {exc}"
    try:
        u = sa.make_url(url)
        with psycopg.connect(
            host=u.host or "127.0.0.1", port=u.port or 5432, user=u.username, password=u.password,
            dbname=u.database, connect_timeout=3,
        ) as conn:
            conn.execute("select 1")
    except Exception as exc:  # noqa: BLE001 - any failure means "no usable server"
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The PostgreSQL server's URL; skips (or fails under ``WORKBENCH_REQUIRE_PG=1``) without one."""
    url = os.environ.get("WORKBENCH_PG_URL") or DEFAULT_PG_URL
    problem = _pg_problem(url)
    if problem is not None:
        msg = (f"no PostgreSQL server at {url} ({problem}); start one with "
               '`eval "$(scripts/postgres.sh)"`')
        if _pg_required():
            pytest.fail("WORKBENCH_REQUIRE_PG is set but " + msg, pytrace=False)
        pytest.skip(msg)
    return url


class PgSchemas:
    """Creates a fresh schema per test (a private namespace on the shared server) and drops it."""

    def __init__(self, url: str):
        self.url = url
        self.made: list[str] = []

    def new_url(self) -> str:
        import sqlalchemy as sa

        name = "wbt_" + uuid.uuid4().hex[:12]
        engine = sa.create_engine(self.url)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {name}")
        engine.dispose()
        self.made.append(name)
        sep = "&" if "?" in self.url else "?"
        return f"{self.url}{sep}options={quote('-csearch_path=' + name)}"

    def drop_all(self) -> None:
        import sqlalchemy as sa

        if not self.made:
            return
        engine = sa.create_engine(self.url)
        with engine.begin() as conn:
            for name in self.made:
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        request.getfixturevalue("pg_url")
        request.applymarker(pytest.mark.postgres)
    return request.param


@pytest.fixture
def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A URL of an empty store on the backend under test (SQLite file or a fresh PG schema)."""
    if backend == "sqlite":
        yield str(tmp_path / "store.db")
        return
    schemas = PgSchemas(request.getfixturevalue("pg_url"))
    try:
        yield schemas.new_url()
    finally:
        schemas.drop_all()


@pytest.fixture
def open_store(store_url: str, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``open_store()`` opens (another handle on) the test's store; all are closed at the end."""
    import workbench

    opened: list[Any] = []

    def _open(**kwargs: Any) -> Any:
        kwargs.setdefault("files_dir", tmp_path / "files")
        s = workbench.open(store_url, **kwargs)
        opened.append(s)
        return s

    yield _open
    for s in opened:
        s.close()


@pytest.fixture
def store(open_store: Callable[..., Any]) -> Any:
    """An empty store, once on SQLite and once on PostgreSQL."""
    return open_store()
