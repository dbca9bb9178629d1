"""Talking to the schedulers over NATS: queries (request/reply) and commands
(JetStream publish, answer on an inbox), each bounded by a deadline.

Nothing here waits without a limit: a bus that is down, a stream that refuses, or a
scheduler that does not answer becomes a 503 (code 50301) that says which of those
happened and whether the command may still be applied.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from pydantic import ValidationError

from fleet_api.errors import ApiError, unavailable
from fleet_api.state import Gateway
from fleet_contracts.codes import ErrorCode
from fleet_contracts.commands import (
    AnyCommand,
    CommandResult,
    Reply,
    request_digest,
    subject_for,
)
from fleet_contracts.envelope import Envelope
from fleet_contracts.presence import SchedulerPresence
from fleet_contracts.queries import QUERY_SUBJECTS, GetCommandResult, Ping, Query
from fleet_contracts.subjects import HDR_REPLY_TO, SCHEDULER_PRESENCE
from fleet_runtime import replies
from fleet_runtime.bus import ensure_streams, headers_for

log = structlog.get_logger(__name__)

PING_TIMEOUT_SECONDS = 1.0
_RESULT_POLL_SECONDS = 0.1


def _require_bus(gw: Gateway) -> None:
    if not gw.nc.is_connected:
        raise unavailable("the message bus (NATS) is not reachable; try again shortly")


# A scheduler's success answer is the REST envelope itself (`Reply`'s fields are the
# envelope's, dumped by pydantic in this order), so it can be sent on untouched.
_SUCCESS_PREFIX = b'{"code":0,"message":"success","data":'


async def _request(gw: Gateway, query: Query, within: float | None) -> tuple[str, bytes]:
    subject = QUERY_SUBJECTS[type(query)]
    limit = within if within is not None else gw.settings.api_query_timeout_seconds
    hedge = gw.settings.api_query_hedge_seconds or None  # queries only read: safe twice
    _require_bus(gw)
    try:
        raw = await replies.request(gw.nc, subject, query.to_bytes(), limit, hedge_after=hedge)
        return subject, raw
    except nats.errors.NoRespondersError as exc:
        raise unavailable(
            f"no scheduler is running (nobody answers {subject}); start fleet_scheduler"
        ) from exc
    except replies.IncompleteReply as exc:
        raise unavailable(
            f"the scheduler's answer to {subject} arrived incomplete within {limit:g}s ({exc})"
        ) from exc
    except (nats.errors.TimeoutError, TimeoutError) as exc:
        raise unavailable(f"no scheduler answered {subject} within {limit:g}s") from exc
    except nats.errors.Error as exc:
        raise unavailable(f"the message bus (NATS) failed: {exc}") from exc


def _data(subject: str, raw: bytes) -> Any:
    try:
        reply = Reply.model_validate_json(raw)
    except ValidationError as exc:
        raise ApiError(
            ErrorCode.INTERNAL, f"the scheduler sent an unreadable reply to {subject}"
        ) from exc
    if not reply.ok:
        raise ApiError.from_reply(reply)
    return reply.data


async def ask(gw: Gateway, query: Query, within: float | None = None) -> Any:
    """The `data` of the scheduler's answer to `query`; its error as an ApiError."""
    subject, raw = await _request(gw, query, within)
    return _data(subject, raw)


async def ask_envelope(gw: Gateway, query: Query, within: float | None = None) -> bytes:
    """The scheduler's success answer to `query` as REST envelope bytes, its error as an
    ApiError.

    For the hot reads (list, stats): parsing the answer into models only to dump the
    same JSON again cost more than the scheduler's whole answer. The scheduler is
    trusted to send the contract's shape, as it is for every other answer's `data`; an
    answer that does not start as a success envelope takes the checked path.
    """
    subject, raw = await _request(gw, query, within)
    if raw.startswith(_SUCCESS_PREFIX) and raw.endswith(b"}"):
        return raw
    data = _data(subject, raw)
    return Envelope(data=data).model_dump_json().encode()


async def recorded_result(
    gw: Gateway, command_id: str, within: float | None = None
) -> CommandResult | None:
    """The result the schedulers recorded for `command_id`, or None if not handled yet."""
    try:
        data = await ask(gw, GetCommandResult(command_id=command_id), within)
    except ApiError as exc:
        if exc.code == ErrorCode.NOT_FOUND:
            return None
        raise
    return CommandResult.model_validate(data)


async def _publish(gw: Gateway, command: AnyCommand, inbox: str, within: float) -> bool:
    """Publish to COMMANDS; True when JetStream says the id was seen already."""
    headers = headers_for(command, **{HDR_REPLY_TO: inbox})
    for attempt in (1, 2):
        try:
            ack = await gw.js.publish(
                subject_for(command), command.to_bytes(), timeout=within, headers=headers
            )
            return bool(ack.duplicate)
        except nats.js.errors.NoStreamResponseError as exc:
            # The server lost its state (restart without storage): make the streams again.
            if attempt == 2:
                raise unavailable("the COMMANDS stream does not answer") from exc
            log.warning("command.stream_missing", command_id=command.message_id)
            s = gw.settings
            await ensure_streams(gw.js, s.streams, replicas=s.nats_stream_replicas)
        except (nats.errors.TimeoutError, TimeoutError) as exc:
            raise unavailable(
                f"the COMMANDS stream did not confirm within {within:g}s; nothing was sent"
            ) from exc
        except nats.errors.Error as exc:
            raise unavailable(f"the message bus (NATS) failed: {exc}") from exc
    raise AssertionError("unreachable")


async def require_scheduler(gw: Gateway) -> None:
    """Return when a scheduler is known to run, else raise the 503 that says none does.

    Known from the schedulers' announcements (fleet_api.presence), so a command costs no
    query; only when none was heard within the window is one ping sent, and a ping
    nobody answered is trusted until a scheduler announces itself again.
    """
    presence = gw.presence
    verdict = presence.verdict()
    if verdict == "present":
        return
    if verdict == "absent":
        raise unavailable(
            f"no scheduler is running (none announced itself on {SCHEDULER_PRESENCE} within "
            f"{presence.window:g}s, and none answered a ping); start fleet_scheduler"
        )
    try:
        answer = await ask(gw, Ping(), PING_TIMEOUT_SECONDS)
    except ApiError as exc:
        if exc.code == ErrorCode.UNAVAILABLE and gw.nc.is_connected:
            presence.confirm_absent()
        raise
    presence.heard_from(SchedulerPresence(scheduler_id=str(answer.get("scheduler_id", ""))))


def _still_pending(command: AnyCommand, keyed: bool, timeout: float) -> ApiError:
    hint = (
        "retry with the same Idempotency-Key to read its result"
        if keyed
        else "it will still be applied when a scheduler picks it up"
    )
    return unavailable(
        f"command accepted under id {command.message_id} but no scheduler answered "
        f"within {timeout:g}s; {hint}"
    )


async def run_command(gw: Gateway, command: AnyCommand, *, key: str | None = None) -> Any:
    """Send `command`, wait for its result, return the result's `data`.

    `key` (the Idempotency-Key the command's id was derived from): a result recorded for
    the id earlier is returned without sending anything - unless it answered a different
    request body, which is a 409 naming the key; a publish JetStream reports as a
    duplicate means the first one is in flight, so its result is polled for until the
    deadline.
    """
    keyed = key is not None

    def _unwrap(result: CommandResult) -> Any:
        if key is not None and result.request_digest not in ("", request_digest(command)):
            raise ApiError(
                ErrorCode.WRONG_STATE,
                f"Idempotency-Key {key!r} was already used for a different request body; "
                "send a new key for a new request (the same body with the same key "
                "returns the first result)",
                {"idempotency_key": key, "command_id": command.message_id},
            )
        return _result_data(result)

    timeout = gw.settings.api_command_timeout_seconds
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    _require_bus(gw)
    if keyed:
        try:
            earlier = await recorded_result(gw, command.message_id, PING_TIMEOUT_SECONDS)
        except ApiError as exc:
            if exc.code != ErrorCode.UNAVAILABLE or not gw.nc.is_connected:
                raise
            # No scheduler answered at once (busy, restarting, cut off): the key makes
            # sending safe anyway, and the command waits on the stream until one does.
            earlier = None
        if earlier is not None:
            log.info("command.replayed", command_id=command.message_id)
            return _unwrap(earlier)
    else:
        # Fail fast when no scheduler runs, rather than queue a command nobody will see soon.
        await require_scheduler(gw)
    inbox = gw.nc.new_inbox()
    sub = await gw.nc.subscribe(inbox, max_msgs=1)
    try:
        duplicate = await _publish(gw, command, inbox, max(0.1, deadline - loop.time()))
        log.info(
            "command.sent", command_id=command.message_id, type=command.type, duplicate=duplicate
        )
        if duplicate:
            while loop.time() < deadline:
                earlier = await recorded_result(gw, command.message_id, PING_TIMEOUT_SECONDS)
                if earlier is not None:
                    return _unwrap(earlier)
                await asyncio.sleep(_RESULT_POLL_SECONDS)
            raise _still_pending(command, keyed, timeout)
        try:
            msg = await sub.next_msg(timeout=max(0.01, deadline - loop.time()))
            return _unwrap(CommandResult.model_validate_json(msg.data))
        except (nats.errors.TimeoutError, TimeoutError):
            pass
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    try:
        late = await recorded_result(gw, command.message_id, PING_TIMEOUT_SECONDS)
    except ApiError as exc:
        if exc.code != ErrorCode.UNAVAILABLE:
            raise
        late = None  # the command is on the stream all the same: say so, below
    if late is not None:
        return _unwrap(late)
    raise _still_pending(command, keyed, timeout)


def _result_data(result: CommandResult) -> Any:
    if not result.ok:
        raise ApiError.from_reply(result)
    return result.data
