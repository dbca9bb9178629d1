"""The command line: serve the API (default), or manage API keys in the KV bucket.

python -m fleet_api                                   serve on FLEET_API_HOST:PORT
python -m fleet_api keys create --name NAME --plan pro  prints the key once
python -m fleet_api keys list
python -m fleet_api keys revoke NAME
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import uvicorn

from fleet_api.app import create_app, start_problem
from fleet_api.keys import create_key, revoke_keys, stored_keys
from fleet_api.kv import open_bucket
from fleet_api.settings import ApiSettings
from fleet_contracts.codes import Plan
from fleet_contracts.subjects import KV_API_KEYS
from fleet_runtime.bus import connect

SHUTDOWN_GRACE_SECONDS = 3


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
    keys.add_parser("list", help="list keys (never their secrets)")
    revoke = keys.add_parser("revoke", help="revoke every live key with this name")
    revoke.add_argument("name")
    return root


async def _keys(settings: ApiSettings, args: argparse.Namespace) -> int:
    nc = await connect(settings.nats_url, "fleet-api-keys", max_reconnect_attempts=0)
    try:
        kv = await open_bucket(nc.jetstream(), KV_API_KEYS)
        if args.action == "create":
            try:
                secret = await create_key(kv, args.name, Plan(args.plan))
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            print(secret)
            print(
                f"key for {args.name!r} (plan {args.plan}); it is not shown again", file=sys.stderr
            )
        elif args.action == "list":
            records = await stored_keys(kv)
            print(f"{'name':<24} {'plan':<9} {'created_at':<26} {'state':<8} hash")
            for digest, record in sorted(records.items(), key=lambda kv: kv[1].created_at):
                state = "revoked" if record.revoked else "active"
                created = record.created_at.isoformat(timespec="seconds")
                print(
                    f"{record.name:<24} {record.plan.value:<9} {created:<26} "
                    f"{state:<8} {digest[:12]}"
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
    nc = await connect(settings.nats_url, "fleet-api-preflight")
    try:
        kv = await open_bucket(nc.jetstream(), KV_API_KEYS)
        return start_problem(settings, await stored_keys(kv))
    finally:
        await nc.close()


def serve(settings: ApiSettings) -> int:
    problem = asyncio.run(_preflight(settings))
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
    server.run()
    return 0 if server.started else 1


def run(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = ApiSettings()
    if args.command == "keys":
        return asyncio.run(_keys(settings, args))
    return serve(settings)
