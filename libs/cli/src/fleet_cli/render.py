"""How the CLI shows things: Rich tables for people, plain JSON for scripts (`--json`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table

from fleet_cli.batch import STATUS_NAMES

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)

STATUS_STYLES = {0: "yellow", 1: "blue", 2: "green", 3: "red"}


def as_json(data: Any) -> None:
    # Plain print, not Rich: a script reading stdout gets exactly the JSON.
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def status(value: int) -> str:
    name = STATUS_NAMES.get(value, str(value))
    return f"[{STATUS_STYLES.get(value, 'white')}]{name}[/]"


def tasks(items: Iterable[dict[str, Any]], title: str | None = None) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("id", "serial", "script", "status", "reason", "retries", "created"):
        table.add_column(
            column,
            justify="right" if column in ("id", "retries") else "left",
            no_wrap=column != "reason",
        )
    for t in items:
        table.add_row(
            str(t["id"]),
            t.get("serial") or "",
            t.get("script_name") or "",
            status(t["status"]),
            t.get("reason") or "",
            str(t.get("retry_count", 0)),
            str(t.get("created_at", ""))[5:19].replace("T", " "),
        )
    out.print(table)


def task(t: dict[str, Any], history: list[dict[str, Any]] | None) -> None:
    table = Table(show_header=False, box=None)
    table.add_column(style="dim")
    table.add_column()
    for key in ("id", "serial", "username", "script_name", "source", "agent_id", "retry_count"):
        if t.get(key) is not None:
            table.add_row(key, str(t[key]))
    table.add_row("status", status(t["status"]))
    if t.get("reason"):
        table.add_row("reason", f"[red]{t['reason']}[/]")
    for key in ("created_at", "due_at", "started_at", "finished_at"):
        if t.get(key):
            table.add_row(key, str(t[key]))
    table.add_row("script_config", json.dumps(t.get("script_config", {}), ensure_ascii=False))
    out.print(table)
    if history is not None:
        events(
            [{"id": e.get("position"), **e} for e in history],
            title="history",
        )


def events(items: Iterable[dict[str, Any]], title: str | None = None) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("id", "when", "event", "task", "serial", "actor", "detail"):
        table.add_column(column)
    for e in items:
        table.add_row(*event_cells(e))
    out.print(table)


def event_cells(e: dict[str, Any]) -> list[str]:
    data = e.get("data") or {}
    detail = data.get("reason") or data.get("step") or data.get("message") or ""
    return [
        str(e.get("id") or ""),
        str(e.get("recorded_at", ""))[:19].replace("T", " "),
        str(e.get("type", "")),
        str(data.get("task_id") or ""),
        str(data.get("serial") or ""),
        str(e.get("actor") or data.get("actor") or ""),
        str(detail),
    ]


def devices(items: list[dict[str, Any]]) -> None:
    table = Table(title=f"{len(items)} device(s)", title_justify="left")
    for column in ("host", "serial", "model", "battery", "state", "task"):
        table.add_column(column)
    for d in sorted(items, key=lambda d: (d.get("host") or "", d["serial"])):
        state = (
            "[dim]offline[/]"
            if not d.get("online")
            else "[blue]busy[/]"
            if d.get("busy")
            else "[green]online[/]"
        )
        table.add_row(
            d.get("host") or d.get("agent_id") or "",
            d["serial"],
            d.get("model") or "",
            f"{d['battery']}%" if d.get("battery") is not None else "",
            state,
            str(d.get("current_task_id") or ""),
        )
    out.print(table)


def keys(items: list[dict[str, Any]]) -> None:
    table = Table()
    for column in ("name", "plan", "role", "created", "state", "fingerprint"):
        table.add_column(column)
    for k in items:
        table.add_row(
            k["name"],
            k["plan"],
            k["role"],
            str(k.get("created_at", ""))[:19].replace("T", " "),
            "[red]revoked[/]" if k.get("revoked") else "[green]active[/]",
            k.get("fingerprint", ""),
        )
    out.print(table)
