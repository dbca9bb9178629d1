"""What each NATS identity may publish and subscribe to: one place, derived from `subjects`.

Three roles connect to the bus. Each gets its own NATS user (an nkey) whose permissions
name only what that role's code really does:

- agent `<id>`: receives `agent.<id>.>` (run / stop, and whatever agent-bound subject is
  added under that prefix later) and `sim.<id>.>`; publishes only its own reports
  (`report.<id>.>`, stored on REPORTS) and heartbeats (`heartbeat.<id>`); answers the
  requests it receives (`allow_responses`, and for leaf links the schedulers' inboxes
  and the gateways' device-call inbox); writes script schemas to the KV bucket
  `scripts`; reads the `materials` object store and writes `artifacts`. It never
  manages streams or buckets.
- gateway: publishes commands (`cmd.>`), asks queries (`query.>`), sends device calls
  (`agent.*.device`), hears heartbeats and the schedulers' presence, manages the
  streams, the `api_keys` / `scripts` buckets and the `materials` / `artifacts` object
  stores, and reads EVENTS for SSE.
- scheduler: the only writer of the log's subjects (`evt.>`), consumes COMMANDS and
  REPORTS, answers queries (and `$SRV.*` discovery of their micro service), hears
  heartbeats, announces its presence, sends run / stop
  requests to agents and command results to the gateways' inboxes.

Every process takes replies on an inbox named for its role (`inbox_prefix`), so one
role's permissions never have to include another's replies. A new need (say, agents
reading an Object Store bucket) is one more `Grant` in the role's list below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fleet_contracts.materials import ARTIFACTS_BUCKET, MATERIALS_BUCKET
from fleet_contracts.subjects import (
    COMMANDS,
    EVENTS,
    HEARTBEAT_WILDCARD,
    KV_API_KEYS,
    KV_SCRIPTS,
    QUERY_SERVICE,
    REPORTS,
    SCHEDULER_COMMANDS_CONSUMER,
    SCHEDULER_PRESENCE,
    SCHEDULER_REPORTS_CONSUMER,
    SCHEDULER_WEBHOOKS_CONSUMER,
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
    # Messages this identity may publish to the reply subject of a request it received,
    # within RESPONSE_WINDOW (0: none beyond its publish list).
    responses: int = 0
    grants: tuple[Grant, ...] = field(default=(), compare=False, repr=False)

    @property
    def allow_responses(self) -> bool:
        return self.responses > 0

    def as_config(self) -> dict[str, object]:
        """The `permissions` block of a nats-server user, as data."""
        out: dict[str, object] = {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.responses:
            out["allow_responses"] = {"max": self.responses, "expires": RESPONSE_WINDOW}
        return out


RESPONSE_WINDOW = "2m"
# A device call (sessions) is answered in pieces below the payload limit: a meta message
# then the body, so one request may get many replies (a 64 MiB body at 128 KiB = 512).
AGENT_RESPONSES = 4096


def device_call_inbox() -> str:
    """Where the gateway takes an agent's answer to a device call, apart from its other
    replies, so an agent behind a leaf node may publish there and nowhere else of it."""
    return f"{inbox_prefix('gateway')}.device"


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


def object_read(bucket: str) -> Grant:
    """Look objects up and stream their chunks (fleet_runtime.objects, nats-py)."""
    stream = f"OBJ_{bucket}"
    return Grant(
        publish=(
            *look_up_stream(stream).publish,
            *read_messages(stream).publish,
            *ephemeral_consumers(stream).publish,
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",
            f"$JS.ACK.{stream}.>",
        )
    )


def object_write(bucket: str) -> Grant:
    """Put objects (chunks, then meta) and purge a replaced or failed upload's chunks."""
    stream = f"OBJ_{bucket}"
    return Grant(
        publish=(*object_read(bucket).publish, f"$O.{bucket}.>", f"$JS.API.STREAM.PURGE.{stream}")
    )


def object_manage(bucket: str) -> Grant:
    return Grant(publish=(*_change(f"OBJ_{bucket}"), *object_write(bucket).publish))


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
        Grant(publish=(f"{inbox_prefix('scheduler')}.>", f"{device_call_inbox()}.>")),
        look_up_stream(REPORTS.name),
        kv_read(KV_SCRIPTS),
        kv_write(KV_SCRIPTS),
        object_read(MATERIALS_BUCKET),  # the material library, cached on the host
        object_write(ARTIFACTS_BUCKET),  # a failed step's screenshot and UI dump
    ]


def gateway_grants() -> list[Grant]:
    return [
        own_inbox(inbox_prefix("gateway")),
        Grant(publish=("cmd.>", "query.>", "agent.*.device")),  # device calls (sessions)
        Grant(subscribe=(HEARTBEAT_WILDCARD,)),  # the live heartbeat view
        Grant(subscribe=(SCHEDULER_PRESENCE,)),  # schedulers alive, without a ping per command
        *(manage_stream(spec.name) for spec in (COMMANDS, EVENTS, REPORTS)),
        ephemeral_consumers(EVENTS.name),
        kv_manage(KV_API_KEYS),
        kv_manage(KV_SCRIPTS),
        object_manage(MATERIALS_BUCKET),
        object_manage(ARTIFACTS_BUCKET),
    ]


def scheduler_grants() -> list[Grant]:
    return [
        own_inbox(inbox_prefix("scheduler")),
        Grant(subscribe=("query.>", HEARTBEAT_WILDCARD)),
        # The queries' micro service answers discovery (`$SRV.PING|INFO|STATS`), to all
        # services and to its own name and id; its replies are responses.
        Grant(subscribe=("$SRV.*", f"$SRV.*.{QUERY_SERVICE}", f"$SRV.*.{QUERY_SERVICE}.*")),
        # The log, run / stop requests to agents, and command results to the gateways.
        Grant(publish=("evt.>", "agent.>", f"{inbox_prefix('gateway')}.>")),
        Grant(publish=(SCHEDULER_PRESENCE,)),  # "I am alive", for the gateways
        *(manage_stream(spec.name) for spec in (COMMANDS, EVENTS, REPORTS)),
        read_messages(EVENTS.name),
        durable_consumer(COMMANDS.name, SCHEDULER_COMMANDS_CONSUMER),
        durable_consumer(REPORTS.name, SCHEDULER_REPORTS_CONSUMER),
        # Webhook delivery: its durable exists only while hooks do, so it is deleted too.
        durable_consumer(EVENTS.name, SCHEDULER_WEBHOOKS_CONSUMER),
        Grant(publish=(f"$JS.API.CONSUMER.DELETE.{EVENTS.name}.{SCHEDULER_WEBHOOKS_CONSUMER}",)),
        kv_read(KV_SCRIPTS),
    ]


def _merge(grants: list[Grant], *, responses: int) -> Permissions:
    def unique(items: list[str]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(items))

    return Permissions(
        publish=unique([s for g in grants for s in g.publish]),
        subscribe=unique([s for g in grants for s in g.subscribe]),
        responses=responses,
        grants=tuple(grants),
    )


def permissions_for(role: Role, agent_id: str | None = None) -> Permissions:
    if role == "agent":
        assert agent_id, "an agent's permissions name the agent"
        return _merge(agent_grants(agent_id), responses=AGENT_RESPONSES)
    if role == "gateway":
        return _merge(gateway_grants(), responses=0)
    # Schedulers answer queries on the gateway's inbox, covered by the grant above;
    # responses also cover a reply to any other requester (ops tools).
    return _merge(scheduler_grants(), responses=1)
