"""Webhook registrations: the commands. Delivery is `webhook_delivery.py`.

The hook (url, event types) is an event in the log; its secret is not: EVENTS and the
SSE stream show every event to every reader, so the secret lives only in the
`webhook_secrets` table, written in the registering transaction.
"""

from __future__ import annotations

import base64
import secrets

import asyncpg

from fleet_contracts.codes import ErrorCode
from fleet_contracts.commands import DeleteWebhook, RegisterWebhook
from fleet_contracts.events import WebhookDeleted, WebhookRegistered
from fleet_contracts.webhooks import SECRET_PREFIX
from fleet_scheduler.errors import Rejected
from fleet_scheduler.handlers import Outcome
from fleet_scheduler.store import NewEvent


def webhook_stream_id(hook_id: int) -> str:
    return f"webhook-{hook_id}"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def register(cmd: RegisterWebhook, hook_id: int, secret: str) -> Outcome:
    hook = cmd.hook
    event = WebhookRegistered(
        hook_id=hook_id, url=hook.url, event_types=hook.event_types, description=hook.description
    )
    data = {
        "id": hook_id,
        "url": hook.url,
        "event_types": hook.event_types,
        "description": hook.description,
        "secret": secret,
    }
    return Outcome(events=[NewEvent(webhook_stream_id(hook_id), event, 0)], data=data)


async def decide(conn: asyncpg.Connection, cmd: RegisterWebhook | DeleteWebhook) -> Outcome:
    match cmd:
        case RegisterWebhook():
            hook_id = await conn.fetchval("SELECT nextval('webhook_ids')")
            secret = cmd.hook.secret or new_secret()
            await conn.execute(
                "INSERT INTO webhook_secrets (hook_id, secret) VALUES ($1, $2)", hook_id, secret
            )
            return register(cmd, hook_id, secret)
        case DeleteWebhook():
            found = await conn.fetchval("SELECT count(*) FROM webhooks WHERE id = $1", cmd.hook_id)
            if not found:
                raise Rejected(ErrorCode.NOT_FOUND, f"webhook {cmd.hook_id} not found")
            await conn.execute("DELETE FROM webhook_secrets WHERE hook_id = $1", cmd.hook_id)
            event = WebhookDeleted(hook_id=cmd.hook_id)
            return Outcome(
                events=[NewEvent(webhook_stream_id(cmd.hook_id), event)],
                data={"id": cmd.hook_id},
            )
