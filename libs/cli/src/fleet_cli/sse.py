"""Server-Sent Events: the `text/event-stream` lines of `/api/v1/events` turned into
events. Pure: fed lines, it yields what the lines complete."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServerEvent:
    event: str
    data: str
    id: str | None = None


@dataclass
class _Pending:
    event: str = ""
    id: str | None = None
    data: list[str] = field(default_factory=list)


def parse(lines: Iterable[str]) -> Iterator[ServerEvent]:
    """Events from stream lines (without their line ends); comments are skipped."""
    pending = _Pending()
    for line in lines:
        if line == "":
            if pending.data:
                yield ServerEvent(pending.event or "message", "\n".join(pending.data), pending.id)
            pending = _Pending()
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            pending.data.append(value)
        elif name == "event":
            pending.event = value
        elif name == "id":
            pending.id = value
