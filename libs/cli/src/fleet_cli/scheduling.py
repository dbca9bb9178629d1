"""`fleet group`, `fleet schedule` and `fleet webhook`: device groups, recurring
schedules and webhooks through the gateway, registered on the main `fleet` app."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from fleet_cli import render
from fleet_cli.app import JsonOption, _script_config, _with_gateway, app
from fleet_cli.client import Gateway

group_app = typer.Typer(
    help="Device groups: targets for tasks and schedules.", no_args_is_help=True
)
schedule_app = typer.Typer(
    help="Recurring schedules (cron or weekdays x times).", no_args_is_help=True
)
webhook_app = typer.Typer(
    help="Webhooks: signed POSTs on events (admin keys).", no_args_is_help=True
)
app.add_typer(group_app, name="group")
app.add_typer(schedule_app, name="schedule")
app.add_typer(webhook_app, name="webhook")

SerialsOption = Annotated[
    list[str] | None, typer.Option("--serial", "-s", help="a phone (repeat for more)")
]


def retry_policy(attempts: int | None, backoff: str | None) -> dict[str, Any] | None:
    """`--retry-attempts 3 --retry-backoff 5-60` as the API's `retry` object."""
    if attempts is None and backoff is None:
        return None
    policy: dict[str, Any] = {"max_attempts": attempts or 3}
    if backoff:
        low, _, high = backoff.partition("-")
        try:
            policy["min_backoff_seconds"] = float(low)
            policy["max_backoff_seconds"] = float(high or low)
        except ValueError:
            raise typer.BadParameter(
                f"--retry-backoff: {backoff!r} is not MIN-MAX seconds"
            ) from None
    return policy


def _show(data: Any, as_json: bool, table: Table) -> None:
    if as_json:
        render.as_json(data)
    else:
        render.out.print(table)


# ------------------------------------------------------------------------- groups
def _groups_table(items: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(items)} group(s)", title_justify="left")
    for column in ("id", "name", "devices"):
        table.add_column(column)
    for g in items:
        table.add_row(str(g["id"]), g["name"], " ".join(g.get("serials", [])))
    return table


@group_app.command("ls")
def group_ls(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every group and its phones."""

    def run(gw: Gateway) -> None:
        data = gw.get("/group")
        _show(data, as_json, _groups_table(data))

    _with_gateway(ctx, run)


@group_app.command("create")
def group_create(
    ctx: typer.Context, name: str, serial: SerialsOption = None, as_json: JsonOption = False
) -> None:
    """Create a group, optionally with phones."""

    def run(gw: Gateway) -> None:
        data = gw.call("POST", "/group", body={"name": name, "serials": serial or []})
        _show(data, as_json, _groups_table([data]))

    _with_gateway(ctx, run)


def _members(ctx: typer.Context, group_id: int, serials: list[str], method: str) -> None:
    def run(gw: Gateway) -> None:
        data = gw.call(method, f"/group/{group_id}/devices", body={"serials": serials})
        render.out.print(_groups_table([data]))

    _with_gateway(ctx, run)


@group_app.command("add")
def group_add(
    ctx: typer.Context, group_id: int, serial: Annotated[list[str], typer.Option("--serial", "-s")]
) -> None:
    """Add phones to a group."""
    _members(ctx, group_id, serial, "POST")


@group_app.command("remove")
def group_remove(
    ctx: typer.Context, group_id: int, serial: Annotated[list[str], typer.Option("--serial", "-s")]
) -> None:
    """Remove phones from a group."""
    _members(ctx, group_id, serial, "DELETE")


@group_app.command("rename")
def group_rename(ctx: typer.Context, group_id: int, name: str) -> None:
    """Rename a group (refused while a schedule targets it)."""

    def run(gw: Gateway) -> None:
        render.out.print(_groups_table([gw.call("PUT", f"/group/{group_id}", body={"name": name})]))

    _with_gateway(ctx, run)


@group_app.command("rm")
def group_rm(ctx: typer.Context, group_id: int) -> None:
    """Delete a group (its phones and tasks stay)."""

    def run(gw: Gateway) -> None:
        gw.call("DELETE", f"/group/{group_id}")
        render.out.print(f"deleted group {group_id}")

    _with_gateway(ctx, run)


# ------------------------------------------------------------------------- schedules
def _schedules_table(items: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(items)} schedule(s)", title_justify="left")
    for column in ("id", "name", "when", "zone", "target", "state", "next fire"):
        table.add_column(column)
    for s in items:
        weekly = s.get("weekly")
        when = s.get("cron") or (
            f"{','.join(weekly['days'])} {','.join(weekly['times'])}" if weekly else ""
        )
        target = s.get("group") or " ".join(s.get("serials") or s.get("usernames") or [])
        upcoming = s.get("next_fires") or []
        table.add_row(
            str(s["id"]),
            s.get("name", ""),
            when,
            s.get("timezone", ""),
            target,
            "[green]enabled[/]" if s.get("enabled") else "[dim]paused[/]",
            str(upcoming[0])[:16].replace("T", " ") if upcoming else "",
        )
    return table


@schedule_app.command("ls")
def schedule_ls(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every schedule with its next fire."""

    def run(gw: Gateway) -> None:
        data = gw.get("/schedule")
        _show(data, as_json, _schedules_table(data))

    _with_gateway(ctx, run)


@schedule_app.command("create")
def schedule_create(
    ctx: typer.Context,
    cron: Annotated[str | None, typer.Option(help='five fields, e.g. "30 9 * * mon-fri"')] = None,
    days: Annotated[str | None, typer.Option(help="weekly: mon,tue,... (with --times)")] = None,
    times: Annotated[str | None, typer.Option(help='weekly: "09:00,18:30"')] = None,
    tz: Annotated[str, typer.Option("--tz", help="IANA time zone")] = "UTC",
    group: Annotated[str | None, typer.Option(help="target group")] = None,
    serial: SerialsOption = None,
    username: Annotated[list[str] | None, typer.Option("--username", "-u")] = None,
    script: Annotated[str, typer.Option(help="the script to run")] = "post",
    config: Annotated[str | None, typer.Option(help="script_config as JSON, or @file")] = None,
    media: Annotated[list[str] | None, typer.Option("--media", "-m")] = None,
    name: Annotated[str, typer.Option(help="a label")] = "",
    overlap: Annotated[str, typer.Option(help="skip or queue")] = "skip",
    paused: Annotated[bool, typer.Option("--paused", help="create it paused")] = False,
    retry_attempts: Annotated[int | None, typer.Option(help="automatic retry: runs")] = None,
    retry_backoff: Annotated[str | None, typer.Option(help="back-off MIN-MAX seconds")] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a schedule; the gateway names any bad field."""
    script_config = _script_config(config)
    if media:
        script_config["material_list"] = list(media)
    body: dict[str, Any] = {
        "name": name,
        "timezone": tz,
        "script_name": script,
        "script_config": script_config,
        "overlap": overlap,
        "enabled": not paused,
    }
    if cron is not None:
        body["cron"] = cron
    if days or times:
        body["weekly"] = {
            "days": [d.strip() for d in (days or "").split(",") if d.strip()],
            "times": [t.strip() for t in (times or "").split(",") if t.strip()],
        }
    for key, value in (("group", group), ("serials", serial), ("usernames", username)):
        if value:
            body[key] = value
    policy = retry_policy(retry_attempts, retry_backoff)
    if policy:
        body["retry"] = policy

    def run(gw: Gateway) -> None:
        data = gw.call("POST", "/schedule", body=body)
        _show(data, as_json, _schedules_table([data]))

    _with_gateway(ctx, run)


def _schedule_action(ctx: typer.Context, schedule_id: int, action: str) -> None:
    def run(gw: Gateway) -> None:
        render.out.print(_schedules_table([gw.call("POST", f"/schedule/{schedule_id}/{action}")]))

    _with_gateway(ctx, run)


@schedule_app.command("pause")
def schedule_pause(ctx: typer.Context, schedule_id: int) -> None:
    """Pause a schedule."""
    _schedule_action(ctx, schedule_id, "pause")


@schedule_app.command("resume")
def schedule_resume(ctx: typer.Context, schedule_id: int) -> None:
    """Resume a schedule (fires missed while paused are not taken)."""
    _schedule_action(ctx, schedule_id, "resume")


@schedule_app.command("rm")
def schedule_rm(ctx: typer.Context, schedule_id: int) -> None:
    """Delete a schedule (its tasks stay)."""

    def run(gw: Gateway) -> None:
        gw.call("DELETE", f"/schedule/{schedule_id}")
        render.out.print(f"deleted schedule {schedule_id}")

    _with_gateway(ctx, run)


# ------------------------------------------------------------------------- webhooks
def _hooks_table(items: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(items)} webhook(s)", title_justify="left")
    for column in ("id", "url", "events"):
        table.add_column(column)
    for h in items:
        table.add_row(str(h["id"]), h["url"], " ".join(h["event_types"]))
    return table


@webhook_app.command("ls")
def webhook_ls(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every webhook (never its secret)."""

    def run(gw: Gateway) -> None:
        data = gw.get("/webhook")
        _show(data, as_json, _hooks_table(data))

    _with_gateway(ctx, run)


@webhook_app.command("get")
def webhook_get(ctx: typer.Context, hook_id: int, as_json: JsonOption = False) -> None:
    """A webhook and its recent delivery attempts."""

    def run(gw: Gateway) -> None:
        data = gw.get(f"/webhook/{hook_id}")
        table = Table(title=f"webhook {hook_id} -> {data['url']}", title_justify="left")
        for column in ("at", "delivery", "event", "attempt", "answer"):
            table.add_column(column)
        for d in data.get("deliveries", []):
            answer = f"[green]{d['status_code']}[/]" if d["delivered"] else f"[red]{d['error']}[/]"
            table.add_row(
                str(d["at"])[:19].replace("T", " "),
                d["delivery_id"],
                d["event_type"],
                str(d["attempt"]),
                answer,
            )
        _show(data, as_json, table)

    _with_gateway(ctx, run)


@webhook_app.command("create")
def webhook_create(
    ctx: typer.Context,
    url: str,
    event: Annotated[list[str], typer.Option("--event", "-e", help="e.g. task.failed")],
    secret: Annotated[str | None, typer.Option(help="whsec_... (made when not given)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Register a webhook; prints its signing secret (shown this once)."""
    body: dict[str, Any] = {"url": url, "event_types": event}
    if secret:
        body["secret"] = secret

    def run(gw: Gateway) -> None:
        data = gw.call("POST", "/webhook", body=body)
        if as_json:
            render.as_json(data)
            return
        print(data["secret"])
        render.err.print(f"webhook {data['id']} -> {url}; the secret is not shown again")

    _with_gateway(ctx, run)


@webhook_app.command("rm")
def webhook_rm(ctx: typer.Context, hook_id: int) -> None:
    """Delete a webhook."""

    def run(gw: Gateway) -> None:
        gw.call("DELETE", f"/webhook/{hook_id}")
        render.out.print(f"deleted webhook {hook_id}")

    _with_gateway(ctx, run)
