"""Shared fixtures."""

from __future__ import annotations

from typing import Callable, Iterator

import psycopg
import pytest
from psycopg import sql
from twisted.logger import LogEvent, globalLogPublisher

from tests.postgres import PostgresServer
from tests.unit.harness import Trow, make_trow


@pytest.fixture
def trow(tmp_path) -> Iterator[Trow]:  # type: ignore[no-untyped-def]
    """An in-memory trow on a fresh data dir."""
    instance = make_trow(str(tmp_path / "data"))
    yield instance
    instance.stores.metadata.close()


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    """Every log event emitted during the test."""
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole run, removed at the end."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    url = postgres.fresh_database()
    yield url
    try:
        postgres.drop_database(str(psycopg.conninfo.conninfo_to_dict(url)["dbname"]))
    except psycopg.Error:
        # A test that stopped the server, or broke it on purpose, must not fail in teardown.
        pass


@pytest.fixture(scope="session")
def _pg_unit_database(postgres: PostgresServer) -> str:
    """The one database that holds every test's schema (``pg_schema_url``)."""
    return postgres.create_database("trow_unit")


@pytest.fixture
def pg_schema_factory(
    postgres: PostgresServer, _pg_unit_database: str
) -> Iterator[Callable[[], str]]:
    """Make URLs for fresh, empty schemas in ``trow_unit``; each is dropped after the test.

    A schema costs a fraction of a database, so unit tests use these.
    """
    schemas: list[str] = []

    def make() -> str:
        schema = postgres.fresh_name("t_")
        with psycopg.connect(_pg_unit_database, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        schemas.append(schema)
        return postgres.url("trow_unit", search_path=schema)

    yield make
    for schema in schemas:
        try:
            with psycopg.connect(_pg_unit_database, autocommit=True) as conn:
                # A connection the test leaked inside a transaction would block the drop forever;
                # a schema left behind in a throwaway database is harmless.
                conn.execute("SET lock_timeout = '10s'")
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )
        except psycopg.Error:
            pass


@pytest.fixture
def pg_schema_url(pg_schema_factory: Callable[[], str]) -> str:
    """The URL of a fresh schema in ``trow_unit``: the connection's search_path is that schema."""
    return pg_schema_factory()
