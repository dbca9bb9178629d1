"""Parameter types shared by the routers: task ids, safe filter strings, the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request
from starlette.convertors import StringConvertor, register_url_convertor

from fleet_api.auth import Caller, api_caller
from fleet_api.correlation import correlation_id

MAX_ID = 2**63 - 1
# Text that reaches PostgreSQL may not hold NUL; refuse it here as a 400.
NO_NUL = r"^[^\x00]*$"

# The words under /task that are paths of their own, never task ids.
TASK_WORDS = ("batch", "stats", "retry-all")


class TaskIdConvertor(StringConvertor):
    """A `/task/{task_id:task_id}` segment: anything but the fixed words, so they are
    never routed as an id (a method they lack is a 405 with an exact `Allow`), while a
    non-integer id still reaches the route and is a 400 naming `task_id`."""

    regex = rf"(?!(?:{'|'.join(TASK_WORDS)})(?:/|$))[^/]+"


register_url_convertor("task_id", TaskIdConvertor())

TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="the task's id", examples=[101])]
Text = Annotated[str | None, Query(max_length=200, pattern=NO_NUL)]
ApiCaller = Annotated[Caller, Depends(api_caller)]


async def request_id(request: Request) -> str:
    return correlation_id(request.scope)


CorrelationId = Annotated[str, Depends(request_id)]
