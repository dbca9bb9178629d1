"""What each NATS identity may publish and subscribe to: one place, derived from `subjects`.

Three roles connect to the bus. Each gets its own NATS user (an nkey) whose permissions
name only what that role's code really does:

- agent `<id>`: receives `agent.<id>.>` (run / stop, and whatever agent-bound subject is
  added under that prefix later) and `sim.<id>.>`; publishes only its own reports
  (`report.<id>.>`, stored on REPORTS) and heartbeats (`heartbeat.<id>`); answers the
  requests it receives (`allow_responses`, and the schedulers' inboxes for leaf links);
  writes script schemas to the KV bucket `scripts`. It never manages streams.
- gateway: publishes commands (`cmd.>`), asks queries (`query.>`), manages the streams
  and the `api_keys` / `scripts` buckets, and reads EVENTS for the SSE feed.
- scheduler: the only writer of the log's subjects (`evt.>`), consumes COMMANDS and
  REPORTS, answers queries, hears heartbeats, sends run / stop requests to agents and
  command results to the gateways' inboxes.

Every process takes replies on an inbox named for its role (`inbox_prefix`), so one
role's permissions never have to include another's replies. A new need (say, agents
reading an Object Store bucket) is one more `Grant` in the role's list below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fleet_contracts.subjects import (
    COMMANDS,
    EVENTS,
    HEARTBEAT_WILDCARD,
    KV_API_KEYS,
    KV_SCRIPTS,
    REPORTS,
    SCHEDULER_COMMANDS_CONSUMER,
    SCHEDULER_REPORTS_CONSUMER,
    heartbeat_subject,
    token,
)

Role = Literal["agent", "gateway", "scheduler"]
ROLES: tuple[Role, ...] = ("agent", "gateway", "scheduler")


@dataclass(frozen=True)
class Grant:
    """Subjects one identity may publish to and subscribe to."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    # Publishing to the reply subject of a request this identity received.
    allow_responses: bool = False
    grants: tuple[Grant, ...] = field(default=(), compare=False, repr=False)

    def as_config(self) -> dict[str, object]:
        """The `permissions` block of a nats-server user, as data."""
        out: dict[str, object] = {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.allow_responses:
            out["allow_responses"] = True
        return out


def inbox_prefix(role: Role, agent_id: str | None = None) -> str:
    """The inbox prefix a process of `role` uses (nats-py `inbox_prefix`)."""
    if role == "agent":
        assert agent_id, "an agent's inbox names the agent"
        return f"_INBOX.agent.{token(agent_id)}"
    return f"_INBOX.{role}"


# Building blocks ---------------------------------------------------------------------
JS_INFO = "$JS.API.INFO"


def own_inbox(prefix: str) -> Grant:
    # JetStream acks, request replies and push-consumer deliveries all land here.
    return Grant(subscribe=(f"{prefix}.>",))


def manage_stream(stream: str) -> Grant:
    """Create, update and inspect one stream (ensure_streams)."""
    return Grant(publish=(JS_INFO, f"$JS.API.STREAM.INFO.{stream}", *_change(stream)))


def _change(stream: str) -> tuple[str, ...]:
    return (f"$JS.API.STREAM.CREATE.{stream}", f"$JS.API.STREAM.UPDATE.{stream}")


def look_up_stream(stream: str) -> Grant:
    return Grant(publish=(JS_INFO, f"$JS.API.STREAM.INFO.{stream}"))


def read_messages(stream: str) -> Grant:
    """Get single messages by sequence (plain and direct gets)."""
    return Grant(
        publish=(
            f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>",
        )
    )


def durable_consumer(stream: str, durable: str) -> Grant:
    """Create / inspect one durable pull consumer, fetch from it and ack its messages."""
    return Grant(
        publish=(
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.{durable}",
            f"$JS.API.CONSUMER.CREATE.{stream}.{durable}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
            f"$JS.ACK.{stream}.{durable}.>",
        )
    )


def ephemeral_consumers(stream: str) -> Grant:
    """Ordered push consumers (the SSE feed): create, inspect, delete, flow control."""
    return Grant(
        publish=(
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.INFO.{stream}.>",
            f"$JS.API.CONSUMER.DELETE.{stream}.>",
            "$JS.FC.>",
        )
    )


def kv_read(bucket: str) -> Grant:
    stream = f"KV_{bucket}"
    return Grant(
        publish=(
            *look_up_stream(stream).publish,
            *read_messages(stream).publish,
            *ephemeral_consumers(stream).publish,  # watch / keys
        )
    )


def kv_write(bucket: str) -> Grant:
    return Grant(publish=(f"$KV.{bucket}.>",))


def kv_manage(bucket: str) -> Grant:
    stream = f"KV_{bucket}"
    return Grant(publish=(*_change(stream), *kv_read(bucket).publish, *kv_write(bucket).publish))


# Roles -------------------------------------------------------------------------------
def agent_grants(agent_id: str) -> list[Grant]:
    me = token(agent_id)
    return [
        own_inbox(inbox_prefix("agent", agent_id)),
        Grant(subscribe=(f"agent.{me}.>", f"sim.{me}.>")),
        Grant(publish=(f"report.{me}.>", heartbeat_subject(agent_id))),
        # Answers to run / stop requests. `allow_responses` covers a direct client, but
        # a leaf-node link only carries what the publish list names, so the
        # schedulers' inboxes are named too (never the gateways').
        Grant(publish=(f"{inbox_prefix('scheduler')}.>",)),
        look_up_stream(REPORTS.name),
        kv_read(KV_SCRIPTS),
        kv_write(KV_SCRIPTS),
    ]


def gateway_grants() -> list[Grant]:
    return [
        own_inbox(inbox_prefix("gateway")),
        Grant(publish=("cmd.>", "query.>")),
        *(manage_stream(spec.name) for spec in (COMMANDS, EVENTS, REPORTS)),
        ephemeral_consumers(EVENTS.name),
        kv_manage(KV_API_KEYS),
        kv_manage(KV_SCRIPTS),
    ]


def scheduler_grants() -> list[Grant]:
    return [
        own_inbox(inbox_prefix("scheduler")),
        Grant(subscribe=("query.>", HEARTBEAT_WILDCARD)),
        # The log, run / stop requests to agents, and command results to the gateways.
        Grant(publish=("evt.>", "agent.>", f"{inbox_prefix('gateway')}.>")),
        *(manage_stream(spec.name) for spec in (COMMANDS, EVENTS, REPORTS)),
        read_messages(EVENTS.name),
        durable_consumer(COMMANDS.name, SCHEDULER_COMMANDS_CONSUMER),
        durable_consumer(REPORTS.name, SCHEDULER_REPORTS_CONSUMER),
        kv_read(KV_SCRIPTS),
    ]


def _merge(grants: list[Grant], *, allow_responses: bool) -> Permissions:
    def unique(items: list[str]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(items))

    return Permissions(
        publish=unique([s for g in grants for s in g.publish]),
        subscribe=unique([s for g in grants for s in g.subscribe]),
        allow_responses=allow_responses,
        grants=tuple(grants),
    )


def permissions_for(role: Role, agent_id: str | None = None) -> Permissions:
    if role == "agent":
        assert agent_id, "an agent's permissions name the agent"
        return _merge(agent_grants(agent_id), allow_responses=True)
    if role == "gateway":
        return _merge(gateway_grants(), allow_responses=False)
    # Schedulers answer queries on the gateway's inbox, covered by the grant above;
    # allow_responses also covers a reply to any other requester (ops tools).
    return _merge(scheduler_grants(), allow_responses=True)
