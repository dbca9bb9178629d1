"""API keys: stored hashed in the JetStream KV bucket `api_keys`, each with a plan.

The bucket key is the sha256 hex of the secret, so the secret itself is shown once at
creation and never stored. Revoking keeps the record (marked revoked) so that revoking
the last key never silently turns a gateway back to open access.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet_contracts.codes import Plan, Role
from fleet_contracts.messages import utcnow

SECRET_PREFIX = "fk_"


class KeyRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(..., min_length=1, max_length=100)
    plan: Plan
    # Keys made before roles existed had full use of the API short of key management.
    role: Role = Role.OPERATOR
    created_at: datetime = Field(default_factory=utcnow)
    revoked: bool = False


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_record(key: str, raw: bytes) -> KeyRecord | None:
    try:
        return KeyRecord.model_validate_json(raw)
    except ValidationError:
        return None


async def stored_keys(kv: KeyValue) -> dict[str, KeyRecord]:
    """Every record in the bucket (revoked ones too), by hash."""
    found: dict[str, KeyRecord] = {}
    watcher = await kv.watchall()
    try:
        async for entry in watcher:
            if entry is None:
                break
            if entry.operation is not None:  # deleted or purged
                continue
            record = parse_record(entry.key, entry.value or b"")
            if record is not None:
                found[entry.key] = record
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return found


async def create_key(kv: KeyValue, name: str, plan: Plan, role: Role = Role.OPERATOR) -> str:
    """Store a new key and return its secret (the only time it is ever known)."""
    record = KeyRecord(name=name, plan=plan, role=role)
    for existing in (await stored_keys(kv)).values():
        if existing.name == name and not existing.revoked:
            raise ValueError(f"name: a key named {name!r} exists already; revoke it first")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    await kv.create(hash_secret(secret), record.model_dump_json().encode())
    return secret


async def revoke_keys(kv: KeyValue, name: str) -> int:
    """Mark every live key called `name` revoked; returns how many there were."""
    count = 0
    for digest, record in (await stored_keys(kv)).items():
        if record.name == name and not record.revoked:
            revoked = record.model_copy(update={"revoked": True})
            await kv.put(digest, revoked.model_dump_json().encode())
            count += 1
    return count
