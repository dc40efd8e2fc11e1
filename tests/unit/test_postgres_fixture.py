"""The PostgreSQL test fixtures give a real server, isolated schemas, and a restartable server."""

from __future__ import annotations

from typing import Callable

import psycopg

from tests.postgres import PostgresServer


def test_schema_url_sets_search_path(pg_schema_url: str) -> None:
    """A table created through ``pg_schema_url`` lands in the test's schema, not in public."""
    with psycopg.connect(pg_schema_url, autocommit=True) as conn:
        row = conn.execute("SHOW search_path").fetchone()
        assert row is not None
        search_path = row[0]
        assert search_path.startswith("t_")
        conn.execute("CREATE TABLE blobs (digest text PRIMARY KEY)")
        schemas = [
            row[0]
            for row in conn.execute(
                "SELECT table_schema FROM information_schema.tables WHERE table_name = 'blobs'"
            )
        ]
    assert schemas == [search_path]


def test_schemas_are_isolated(
    pg_schema_url: str, pg_schema_factory: Callable[[], str]
) -> None:
    """Two schema URLs see different tables of the same name."""
    other_url = pg_schema_factory()
    assert other_url != pg_schema_url
    with psycopg.connect(pg_schema_url, autocommit=True) as a, psycopg.connect(
        other_url, autocommit=True
    ) as b:
        a.execute("CREATE TABLE tags (name text)")
        b.execute("CREATE TABLE tags (name text)")
        a.execute("INSERT INTO tags VALUES ('latest')")
        assert a.execute("SELECT count(*) FROM tags").fetchone() == (1,)
        assert b.execute("SELECT count(*) FROM tags").fetchone() == (0,)


def test_restart_keeps_data_and_port(postgres: PostgresServer, pg_url: str) -> None:
    """stop() then start() brings the same server back on the same URL with its data."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v int)")
        conn.execute("INSERT INTO t VALUES (42)")
    port = postgres.port
    postgres.stop()
    try:
        assert not postgres.running
    finally:
        # Later tests share this server: bring it back whatever happened.
        postgres.start()
    assert postgres.running
    assert postgres.port == port
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT v FROM t").fetchone() == (42,)


def test_collation_is_not_bytewise(postgres: PostgresServer, pg_url: str) -> None:
    """The databases sort text linguistically (ICU en-US), not byte by byte.

    Code that relies on byte order (say, for pagination of tag lists) then fails here as it would
    on a production server created with a linguistic locale.
    """
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        assert row == ("UTF8",)
        # Linguistic order ignores case first; byte order would put "B" before "a".
        ordered = [r[0] for r in conn.execute("SELECT v FROM (VALUES ('B'), ('a')) AS x(v) ORDER BY v")]
        assert ordered == ["a", "B"]
