"""The embedded servers answer real clients and survive a restart with their data."""

from __future__ import annotations

import asyncpg
import nats
import pytest

from fleet_devstack import EmbeddedNats, EmbeddedPostgres


async def test_nats_has_jetstream(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await js.add_stream(name="S", subjects=["s.>"])
    ack = await js.publish("s.x", b"hello")
    assert ack.seq == 1
    await nc.close()


async def test_nats_keeps_streams_across_restart(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url)
    await nc.jetstream().add_stream(name="KEEP", subjects=["k.>"])
    await nc.jetstream().publish("k.1", b"x")
    await nc.close()
    nats_server.restart(kill=True)
    nc = await nats.connect(nats_server.url)
    info = await nc.jetstream().stream_info("KEEP")
    assert info.state.messages == 1
    await nc.close()


async def test_postgres_database_per_test(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    assert await conn.fetchval("select count(*) from pg_tables where schemaname='public'") == 0
    await conn.execute("create table t (x int)")
    await conn.close()


async def test_postgres_restart_keeps_data(tmp_path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg", log_file=tmp_path / "pg.log")
    server.start()
    try:
        conn = await asyncpg.connect(server.dsn)
        await conn.execute("create table t (x int); insert into t values (7)")
        await conn.close()
        server.restart(kill=True)
        conn = await asyncpg.connect(server.dsn)
        assert await conn.fetchval("select x from t") == 7
        await conn.close()
    finally:
        server.stop()


async def test_postgres_wants_its_password(pg_server: EmbeddedPostgres) -> None:
    """No local user gets in on trust: the generated password is in the DSN, and a
    connection without it, or with another, is refused."""
    if not isinstance(pg_server, EmbeddedPostgres):
        pytest.skip("PostgreSQL runs in a container here; its auth is the image's")
    assert pg_server.password
    assert pg_server.password in pg_server.dsn
    assert oct(pg_server.password_file.stat().st_mode & 0o777) == "0o600"
    conn = await asyncpg.connect(pg_server.dsn)
    assert await conn.fetchval("select 1") == 1
    await conn.close()
    anonymous = f"postgresql://postgres@{pg_server.host}:{pg_server.port}/postgres"
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(anonymous, password="")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(anonymous, password="not-the-password")
