"""The `fleet` commands: tasks, devices, the event stream and API keys, all through
the gateway (`--url` / FLEET_URL, `--key` / FLEET_API_KEY)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fleet_cli import render
from fleet_cli.batch import COMPLETED, FAILED, RUNNING, Batch
from fleet_cli.client import DEFAULT_URL, Gateway, GatewayError, Unreachable, envelope_of
from fleet_cli.sse import ServerEvent

app = typer.Typer(
    help="Operate a fleet of phones through its gateway: tasks, devices, live events, keys.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
task_app = typer.Typer(
    help="Create, list, inspect, stop, retry and delete tasks.", no_args_is_help=True
)
device_app = typer.Typer(help="The phones the agents report.", no_args_is_help=True)
events_app = typer.Typer(help="The live event stream.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (admin keys only).", no_args_is_help=True)
app.add_typer(task_app, name="task")
app.add_typer(device_app, name="device")
app.add_typer(events_app, name="events")
app.add_typer(keys_app, name="keys")

STATUS_VALUES = {"pending": 0, "running": 1, "completed": 2, "failed": 3}
EXIT_FAILED_TASKS = 1
EXIT_GATEWAY_ERROR = 2
EXIT_UNREACHABLE = 3

T = TypeVar("T")
JsonOption = Annotated[bool, typer.Option("--json", help="print the API's data as JSON")]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")]


@dataclass
class Settings:
    url: str
    key: str | None


@app.callback()
def main_options(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option(envvar="FLEET_URL", help="the gateway's base URL")
    ] = DEFAULT_URL,
    key: Annotated[
        str | None,
        typer.Option(
            envvar="FLEET_API_KEY", help="API key (not needed on a keyless loopback gateway)"
        ),
    ] = None,
) -> None:
    ctx.obj = Settings(url=url, key=key or None)


def _fail(message: str, code: int) -> NoReturn:
    render.err.print(f"[red]error:[/] {message}", markup=True)
    raise typer.Exit(code)


def _with_gateway(ctx: typer.Context, work: Callable[[Gateway], T]) -> T:
    settings: Settings = ctx.obj
    gateway = Gateway(settings.url, settings.key)
    try:
        return work(gateway)
    except GatewayError as exc:
        _fail(f"{exc.message} (code {exc.code})", EXIT_GATEWAY_ERROR)
    except Unreachable as exc:
        _fail(str(exc), EXIT_UNREACHABLE)
    finally:
        gateway.close()


def _status_value(value: str | None) -> int | None:
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    try:
        return STATUS_VALUES[value.lower()]
    except KeyError:
        raise typer.BadParameter(
            f"{value!r} is not a status: pending, running, completed, failed or 0-3"
        ) from None


def _script_config(config: str | None) -> dict[str, Any]:
    if not config:
        return {}
    text = Path(config[1:]).read_text() if config.startswith("@") else config
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--config: not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter("--config: must be a JSON object")
    return parsed


# ------------------------------------------------------------------------- tasks
@task_app.command("create")
def task_create(
    ctx: typer.Context,
    serial: Annotated[
        list[str] | None, typer.Option("--serial", "-s", help="a phone (repeat for more)")
    ] = None,
    username: Annotated[
        list[str] | None, typer.Option("--username", "-u", help="an account (repeat for more)")
    ] = None,
    script: Annotated[str, typer.Option(help="the script to run")] = "post",
    config: Annotated[str | None, typer.Option(help="script_config as JSON, or @file.json")] = None,
    video: Annotated[
        list[str] | None,
        typer.Option("--media", "-m", help="a file for material_list (repeat for more)"),
    ] = None,
    caption: Annotated[str | None, typer.Option(help="captions (spintax allowed)")] = None,
    upload_wait: Annotated[int | None, typer.Option(help="upload_wait_time, seconds")] = None,
    min_interval: Annotated[int, typer.Option(help="minutes")] = 0,
    max_interval: Annotated[int, typer.Option(help="minutes")] = 0,
    start_time: Annotated[str | None, typer.Option(help='"HH:MM"')] = None,
    multi_account: Annotated[
        bool, typer.Option(help="device mode: one task per account on each phone")
    ] = False,
    idempotency_key: Annotated[
        str | None, typer.Option(help="the same key never creates twice")
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="show progress until every task ends; exit 1 if any failed"),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Create tasks: one per phone (--serial) or per account (--username)."""
    script_config = _script_config(config)
    if video:
        script_config["material_list"] = list(video)
    if caption is not None:
        script_config["captions"] = caption
    if upload_wait is not None:
        script_config["upload_wait_time"] = upload_wait
    body: dict[str, Any] = {
        "script_name": script,
        "script_config": script_config,
        "min_interval": min_interval,
        "max_interval": max_interval,
        "enable_multi_account": multi_account,
    }
    if serial:
        body["serials"] = serial
    if username:
        body["usernames"] = username
    if start_time:
        body["start_time"] = start_time
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None

    def create(gw: Gateway) -> None:
        if not wait:
            data = gw.call("POST", "/task", body=body, headers=headers)
            if as_json:
                render.as_json(data)
            else:
                render.out.print(f"created {data['created_count']} task(s): {data['task_ids']}")
            return
        # Follow the stream before creating, so no event of the batch can slip by; the
        # stream says None each time it (re)opens.
        stream = gw.events({"type": "task."})
        next(stream)
        data = gw.call("POST", "/task", body=body, headers=headers)
        batch = Batch.of(data["task_ids"])
        _seed(gw, batch)
        if not as_json:
            render.err.print(f"created {data['created_count']} task(s): {data['task_ids']}")
        _follow_batch(gw, batch, stream, quiet=as_json)
        failed = batch.failed()
        if as_json:
            render.as_json(
                {
                    "task_ids": data["task_ids"],
                    "completed": batch.count(COMPLETED),
                    "failed": {str(k): v for k, v in failed.items()},
                }
            )
        else:
            render.out.print(
                f"{batch.count(COMPLETED)} completed, {len(failed)} failed"
                + "".join(f"\n  #{task_id}: {reason}" for task_id, reason in failed.items())
            )
        if failed:
            raise typer.Exit(EXIT_FAILED_TASKS)

    _with_gateway(ctx, create)


def _seed(gw: Gateway, batch: Batch) -> None:
    for task_id in list(batch.statuses):
        try:
            t = gw.get(f"/task/{task_id}")
        except GatewayError as exc:
            if exc.status != 404:
                raise
            batch.apply("task.deleted", {"task_id": task_id})
            continue
        batch.seed(task_id, t["status"], t.get("reason"))


def _follow_batch(
    gw: Gateway, batch: Batch, stream: Iterator[ServerEvent | None], quiet: bool
) -> None:
    if batch.done:
        return
    total = len(batch.statuses)
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=render.err,
        disable=quiet,
    ) as progress:
        bar = progress.add_task("tasks", total=total, detail="")

        def show() -> None:
            detail = (
                f"[blue]{batch.count(RUNNING)} running[/] [green]{batch.count(COMPLETED)} done[/]"
                f" [red]{batch.count(FAILED)} failed[/]"
            )
            progress.update(bar, completed=batch.finished, detail=detail)

        show()
        for event in stream:
            if event is None:  # reopened after a drop: catch up on what we may have missed
                _seed(gw, batch)
                show()
                continue
            envelope = envelope_of(event)
            if batch.apply(str(envelope.get("type", "")), envelope.get("data") or {}):
                show()
            if batch.done:
                return


@task_app.command("ls")
def task_ls(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option(help="pending, running, completed, failed (or 0-3)")
    ] = None,
    serial: Annotated[str | None, typer.Option()] = None,
    script: Annotated[str | None, typer.Option(help="script_name")] = None,
    source: Annotated[str | None, typer.Option(help="api or ui")] = None,
    page: Annotated[int, typer.Option(min=1)] = 1,
    page_size: Annotated[int, typer.Option(min=1, max=100)] = 20,
    as_json: JsonOption = False,
) -> None:
    """List tasks, newest first, with the API's filters and paging."""
    params = {
        "status": _status_value(status),
        "serial": serial,
        "script_name": script,
        "source": source,
        "page": page,
        "page_size": page_size,
    }

    def ls(gw: Gateway) -> None:
        data = gw.get("/task", **params)
        if as_json:
            render.as_json(data)
            return
        pages = max(1, -(-data["total"] // data["page_size"]))
        render.tasks(
            data["tasks"], title=f"page {data['page']} of {pages} · {data['total']} task(s)"
        )

    _with_gateway(ctx, ls)


@task_app.command("get")
def task_get(
    ctx: typer.Context,
    task_id: Annotated[int, typer.Argument(min=1)],
    history: Annotated[bool, typer.Option("--history", help="with its event history")] = False,
    as_json: JsonOption = False,
) -> None:
    """One task; --history adds every event in its log."""

    def get(gw: Gateway) -> None:
        data = gw.get(f"/task/{task_id}")
        events = gw.get(f"/task/{task_id}/events") if history else None
        if as_json:
            render.as_json({**data, "history": events} if history else data)
        else:
            render.task(data, events)

    _with_gateway(ctx, get)


def _each(ctx: typer.Context, ids: list[int], verb: str, method: str, suffix: str) -> None:
    def run(gw: Gateway) -> None:
        errors = 0
        for task_id in ids:
            try:
                gw.call(method, f"/task/{task_id}{suffix}")
                render.out.print(f"{verb} #{task_id}")
            except GatewayError as exc:
                errors += 1
                render.err.print(f"[red]#{task_id}:[/] {exc.message} (code {exc.code})")
        if errors:
            raise typer.Exit(EXIT_GATEWAY_ERROR)

    _with_gateway(ctx, run)


@task_app.command("stop")
def task_stop(ctx: typer.Context, task_ids: Annotated[list[int], typer.Argument(min=1)]) -> None:
    """Stop tasks; each ends failed with reason 'stopped'."""
    _each(ctx, task_ids, "stopped", "POST", "/stop")


@task_app.command("retry")
def task_retry(ctx: typer.Context, task_ids: Annotated[list[int], typer.Argument(min=1)]) -> None:
    """Move failed tasks back to pending."""
    _each(ctx, task_ids, "retried", "POST", "/retry")


@task_app.command("retry-all")
def task_retry_all(ctx: typer.Context, yes: YesOption = False, as_json: JsonOption = False) -> None:
    """Retry every failed task."""
    if not yes:
        typer.confirm("Retry every failed task?", abort=True)

    def run(gw: Gateway) -> None:
        data = gw.call("POST", "/task/retry-all")
        if as_json:
            render.as_json(data)
        else:
            count = data.get("retried_count", len(data.get("task_ids", [])))
            render.out.print(f"retried {count} task(s)")

    _with_gateway(ctx, run)


@task_app.command("rm")
def task_rm(
    ctx: typer.Context,
    task_ids: Annotated[list[int], typer.Argument(min=1)],
    yes: YesOption = False,
    as_json: JsonOption = False,
) -> None:
    """Delete tasks (running ones are stopped first)."""
    if not yes:
        typer.confirm(f"Delete {len(task_ids)} task(s)?", abort=True)

    def run(gw: Gateway) -> None:
        data = gw.call("DELETE", "/task/batch", body={"task_ids": task_ids})
        if as_json:
            render.as_json(data)
            return
        render.out.print(f"deleted {data['deleted_count']} task(s): {data['deleted_ids']}")
        if data.get("not_found_ids"):
            render.err.print(f"[yellow]not found:[/] {data['not_found_ids']}")
            raise typer.Exit(EXIT_GATEWAY_ERROR)

    _with_gateway(ctx, run)


@task_app.command("stats")
def task_stats(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Task counts by status."""

    def run(gw: Gateway) -> None:
        data = gw.get("/task/stats")
        if as_json:
            render.as_json(data)
        else:
            render.out.print("  ".join(f"{k} {v}" for k, v in data.items()))

    _with_gateway(ctx, run)


# ------------------------------------------------------------------------- devices
@device_app.command("ls")
def device_ls(
    ctx: typer.Context,
    online: Annotated[
        bool | None, typer.Option("--online/--offline", help="only online or offline phones")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Every phone: host, model, battery, online, busy with which task."""

    def run(gw: Gateway) -> None:
        params = {"online": None if online is None else str(online).lower()}
        items = gw.every("/device", "devices", **params)
        if as_json:
            render.as_json(items)
        else:
            render.devices(items)

    _with_gateway(ctx, run)


# ------------------------------------------------------------------------- events
@events_app.command("tail")
def events_tail(
    ctx: typer.Context,
    task_id: Annotated[int | None, typer.Option(min=1, help="one task's events")] = None,
    serial: Annotated[str | None, typer.Option(help="one phone's events")] = None,
    event_type: Annotated[
        str | None, typer.Option("--type", help="type prefix: task. or task.failed")
    ] = None,
    since: Annotated[int | None, typer.Option(min=0, help="resume after this event id")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="stop after this many")] = None,
    as_json: JsonOption = False,
) -> None:
    """Follow live events (Ctrl-C stops; the last id seen is printed to resume from)."""
    params = {"task_id": task_id, "serial": serial, "type": event_type}
    last: str | None = None

    def run(gw: Gateway) -> None:
        nonlocal last
        seen = 0
        for event in gw.events(params, after=None if since is None else str(since)):
            if event is None:
                continue
            last = event.id or last
            envelope = envelope_of(event)
            if as_json:
                print(json.dumps({"id": event.id, **envelope}, ensure_ascii=False), flush=True)
            else:
                render.out.print("  ".join(render.event_cells({"id": event.id, **envelope})))
            seen += 1
            if limit is not None and seen >= limit:
                return

    with contextlib.suppress(KeyboardInterrupt):
        _with_gateway(ctx, run)
    if last is not None:
        render.err.print(f"last event id {last}; resume with --since {last}")


# ------------------------------------------------------------------------- keys
@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="who the key is for")],
    plan: Annotated[str, typer.Option(help="starter, pro, team or business")] = "pro",
    role: Annotated[str, typer.Option(help="viewer, operator or admin")] = "operator",
    as_json: JsonOption = False,
) -> None:
    """Create a key and print its secret (shown this once)."""

    def run(gw: Gateway) -> None:
        data = gw.call("POST", "/keys", body={"name": name, "plan": plan, "role": role})
        if as_json:
            render.as_json(data)
            return
        print(data["key"])
        render.err.print(
            f"key {data['name']!r} (plan {data['plan']}, role {data['role']}); "
            "it is not shown again"
        )

    _with_gateway(ctx, run)


@keys_app.command("ls")
def keys_ls(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every key (never its secret), revoked ones too."""

    def run(gw: Gateway) -> None:
        data = gw.get("/keys")
        if as_json:
            render.as_json(data)
        else:
            render.keys(data)

    _with_gateway(ctx, run)


@keys_app.command("revoke")
def keys_revoke(ctx: typer.Context, name: str) -> None:
    """Revoke every live key with this name."""

    def run(gw: Gateway) -> None:
        data = gw.call("DELETE", f"/keys/{name}")
        render.out.print(f"revoked {data['revoked_count']} key(s) named {name!r}")

    _with_gateway(ctx, run)


def main() -> None:
    app(prog_name="fleet")


if __name__ == "__main__":
    main()
