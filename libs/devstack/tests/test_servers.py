"""The embedded servers answer real clients and survive a restart with their data."""

from __future__ import annotations

import socket
from pathlib import Path

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


@pytest.mark.parametrize("kind", ["nats", "postgres"])
def test_a_picked_port_taken_before_the_server_binds_it_moves_to_another(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parallel test workers each pick free ports; one may take another's pick before
    that server binds it. The server then starts on a fresh port instead of failing."""
    from fleet_devstack import servers

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        picks = iter([busy])
        real = servers.free_port

        def pick(host: str = "127.0.0.1") -> int:
            return next(picks, 0) or real(host)

        monkeypatch.setattr(servers, "free_port", pick)
        server: EmbeddedNats | EmbeddedPostgres = (
            EmbeddedNats(tmp_path / "nats")
            if kind == "nats"
            else EmbeddedPostgres(tmp_path / "pg", log_file=tmp_path / "pg.log", durable=False)
        )
        assert server.port == busy
        try:
            server.start()
            assert server.port != busy
            assert server.running
        finally:
            server.stop()


def test_a_free_port_is_below_the_range_outgoing_connections_draw_from() -> None:
    """A client's outgoing connection cannot take a picked port before its server binds
    it (a port from that range could be, and a gateway under test failed to start)."""
    from fleet_devstack import servers

    low, _ = servers._outgoing_ports()
    ports = [servers.free_port() for _ in range(20)]
    assert all(port < low for port in ports), (low, ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
