"""The operator console: server-rendered pages under `/console`, a client of the API.

The pages hold no fleet data themselves. Each is a Jinja2 shell (layout, filters taken
from the URL) and `static/console.js` fills it from the same `/api/v1` REST and SSE
endpoints a user's script calls, with the API key the operator typed (kept in the
browser). So the console can show nothing the API would not answer to that key, and
it needs no second backend, no build step and no internet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

HERE = Path(__file__).parent
STATIC_URL = "/console/static"
STATUS_NAMES = {"0": "pending", "1": "running", "2": "completed", "3": "failed"}
# The filters each page keeps in its URL, exactly as the API spells them.
TASK_FILTERS = ("status", "serial", "script_name", "source", "page", "page_size")
EVENT_FILTERS = ("task_id", "serial", "type", "since")

templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)


def _page(request: Request, name: str, title: str, **context: object) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        name,
        {"title": title, "static": STATIC_URL, "status_names": STATUS_NAMES, **context},
    )


def _filters(request: Request, names: tuple[str, ...]) -> dict[str, str]:
    return {name: request.query_params.get(name, "") for name in names}


@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> HTMLResponse:
    return _page(request, "home.html", "Fleet")


@router.get("/console", response_class=HTMLResponse)
async def overview(request: Request) -> HTMLResponse:
    return _page(request, "overview.html", "Overview", nav="overview")


@router.get("/console/tasks", response_class=HTMLResponse)
async def tasks(request: Request) -> HTMLResponse:
    return _page(
        request, "tasks.html", "Tasks", nav="tasks", filters=_filters(request, TASK_FILTERS)
    )


@router.get("/console/tasks/{task_id}", response_class=HTMLResponse)
async def task(request: Request, task_id: Annotated[int, PathParam(ge=1)]) -> HTMLResponse:
    return _page(request, "task.html", f"Task {task_id}", nav="tasks", task_id=task_id)


@router.get("/console/devices", response_class=HTMLResponse)
async def devices(request: Request) -> HTMLResponse:
    return _page(request, "devices.html", "Devices", nav="devices")


@router.get("/console/devices/{serial}", response_class=HTMLResponse)
async def device(
    request: Request, serial: Annotated[str, PathParam(min_length=1, max_length=200)]
) -> HTMLResponse:
    return _page(request, "device.html", f"Device {serial}", nav="devices", serial=serial)


@router.get("/console/events", response_class=HTMLResponse)
async def event_tail(request: Request) -> HTMLResponse:
    return _page(
        request, "events.html", "Events", nav="events", filters=_filters(request, EVENT_FILTERS)
    )


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=HERE / "static"), name="console-static")
