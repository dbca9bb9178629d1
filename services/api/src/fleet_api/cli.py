"""The command line: serve the API (default), or manage API keys in the KV bucket.

python -m fleet_api                                   serve on FLEET_API_HOST:PORT
python -m fleet_api keys create --name NAME --plan pro [--role admin]  prints the key once
python -m fleet_api keys list
python -m fleet_api keys revoke NAME
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from nats.aio.client import Client

from fleet_api.keys import create_key, revoke_keys, stored_keys
from fleet_api.kv import open_bucket
from fleet_api.settings import ApiSettings
from fleet_contracts.codes import Plan, Role
from fleet_contracts.permissions import inbox_prefix
from fleet_contracts.subjects import KV_API_KEYS
from fleet_runtime.bus import connect

SHUTDOWN_GRACE_SECONDS = 3
CONNECT_SECONDS = 10


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m fleet_api", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the REST API (the default)")
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="action", required=True
    )
    create = keys.add_parser("create", help="create a key and print it (shown once)")
    create.add_argument("--name", required=True, help="who the key is for")
    create.add_argument("--plan", required=True, choices=[p.value for p in Plan])
    create.add_argument(
        "--role",
        default=Role.OPERATOR.value,
        choices=[r.value for r in Role],
        help="viewer reads; operator also acts on tasks (default); admin also manages keys",
    )
    keys.add_parser("list", help="list keys (never their secrets)")
    revoke = keys.add_parser("revoke", help="revoke every live key with this name")
    revoke.add_argument("name")
    return root


class BusUnreachable(RuntimeError):
    pass


async def _connect_once(settings: ApiSettings, name: str) -> Client:
    """One connection attempt, bounded: a command line should fail, not wait forever."""
    try:
        return await asyncio.wait_for(
            connect(
                settings.nats_url,
                name,
                allow_reconnect=False,
                max_reconnect_attempts=1,  # nats-py: 0 would retry forever
                connect_timeout=3,
                link=settings.nats_link(inbox_prefix("gateway")),
            ),
            CONNECT_SECONDS,
        )
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        raise BusUnreachable(
            f"cannot reach NATS at {settings.nats_url} (FLEET_NATS_URL): {reason}"
        ) from exc


async def _keys(settings: ApiSettings, args: argparse.Namespace) -> int:
    nc = await _connect_once(settings, "fleet-api-keys")
    try:
        kv = await open_bucket(nc.jetstream(), KV_API_KEYS, settings.kv_config(KV_API_KEYS))
        if args.action == "create":
            try:
                secret = await create_key(kv, args.name, Plan(args.plan), Role(args.role))
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(secret)
            print(
                f"key for {args.name!r} (plan {args.plan}, role {args.role}); "
                "it is not shown again",
                file=sys.stderr,
            )
        elif args.action == "list":
            records = await stored_keys(kv)
            print(f"{'name':<24} {'plan':<9} {'role':<9} {'created_at':<26} {'state':<8} hash")
            for digest, record in sorted(records.items(), key=lambda kv: kv[1].created_at):
                state = "revoked" if record.revoked else "active"
                created = record.created_at.isoformat(timespec="seconds")
                print(
                    f"{record.name:<24} {record.plan.value:<9} {record.role.value:<9} "
                    f"{created:<26} {state:<8} {digest[:12]}"
                )
        elif args.action == "revoke":
            count = await revoke_keys(kv, args.name)
            if not count:
                print(f"error: no live key named {args.name!r}", file=sys.stderr)
                return 1
            print(f"revoked {count} key(s) named {args.name!r}")
        return 0
    finally:
        await nc.close()


async def _preflight(settings: ApiSettings) -> str | None:
    """Why the gateway must not serve, if it must not; waits for NATS to come up."""
    from fleet_api.app import start_problem

    this = asyncio.current_task()
    assert this is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, this.cancel)
    nc = await connect(
        settings.nats_url,
        "fleet-api-preflight",
        link=settings.nats_link(inbox_prefix("gateway")),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    try:
        kv = await open_bucket(nc.jetstream(), KV_API_KEYS, settings.kv_config(KV_API_KEYS))
        return start_problem(settings, await stored_keys(kv))
    finally:
        await nc.close()


def serve(settings: ApiSettings) -> int:
    # Imported here so that the key commands start without loading the web stack.
    import uvicorn

    from fleet_api.app import create_app

    try:
        problem = asyncio.run(_preflight(settings))
    except asyncio.CancelledError:
        return 0  # asked to stop while waiting for NATS
    if problem:
        print(f"fleet_api: {problem}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the stop signal once it has shut down gracefully, under the
    # handler that was there before it; ignoring both makes a clean stop exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    server.run()
    return 0 if server.started else 1


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = ApiSettings()
    try:
        if args.command == "keys":
            return asyncio.run(_keys(settings, args))
        return serve(settings)
    except BusUnreachable as exc:
        print(f"fleet_api: {exc}", file=sys.stderr)
        return 3
