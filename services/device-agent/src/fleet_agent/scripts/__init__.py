"""The script plugin interface, and the catalogue of installed scripts.

A script is a class registered under the entry-point group `fleet.scripts`:

    [project.entry-points."fleet.scripts"]
    my_script = "my_package.module:MyScript"

The class is called with one `ScriptHost` (this agent's id, material roots, a random
source). It has a `name`, a `description`, a pydantic `config_model` (its JSON Schema is
published with the catalogue so the gateway and scheduler validate `script_config`
before a task exists) and `async run(target, config, progress, cancel)`, which returns a
result dict or raises `ScriptFailure` with a reason a person can act on.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import structlog
from pydantic import BaseModel

from fleet_agent.cache import MaterialCache
from fleet_agent.materials import SharedChecks
from fleet_agent.phone import Phone
from fleet_contracts.scripts import ScriptSpec

log = structlog.get_logger(__name__)

ENTRY_POINT_GROUP = "fleet.scripts"

Progress = Callable[[str, int | None, str], Awaitable[None]]
"""`await progress(step, percent, message)`: reported to the scheduler as it happens."""


class ScriptFailure(Exception):
    """The script ended without success; `reason` is what the operator reads.

    `on_screen` says whether the phone's screen explains the failure: the runner then
    keeps a screenshot. A material check failing before the phone is touched says no.
    """

    def __init__(self, reason: str, *, on_screen: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.on_screen = on_screen


@dataclass(frozen=True)
class ScriptHost:
    """What the agent tells every script about where it runs."""

    agent_id: str
    material_roots: tuple[Path, ...] = ()
    material_library: Path | None = None
    library: MaterialCache | None = None
    """The host's cache of central-library items (`library:` entries of material_list)."""
    rng: random.Random = field(default_factory=random.Random)
    checks: SharedChecks = field(default_factory=SharedChecks)
    """Material checks shared by runs asking for the same files at the same time."""
    ui_timeout: float = 15.0
    optional_wait: float = 2.0


@dataclass(frozen=True)
class Target:
    """The phone a run drives, and who the run is for.

    `platform` is the account's platform when the agent found the account on the
    phone ("tiktok", "instagram"), else None.
    """

    phone: Phone
    task_id: int
    username: str | None = None
    platform: str | None = None


class Cancelled(Exception):
    """Raised by `CancelToken.check` once a stop, unplug or shutdown was asked for."""


class CancelToken:
    """Set when the run must end; scripts check it between steps.

    The runner also cancels the script's asyncio task, so a script blocked in an
    await ends promptly even if it never checks.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.reason = ""

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason)


@runtime_checkable
class Script(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]
    config_model: ClassVar[type[BaseModel]]

    async def run(
        self, target: Target, config: Any, progress: Progress, cancel: CancelToken
    ) -> dict[str, Any]: ...


ScriptFactory = Callable[[ScriptHost], Script]


def spec_of(script: Script, *, builtin: bool = False) -> ScriptSpec:
    return ScriptSpec(
        name=script.name,
        description=script.description,
        config_schema=script.config_model.model_json_schema(),
        builtin=builtin,
    )


def discover(host: ScriptHost) -> dict[str, Script]:
    """Every script installed under the entry-point group, by name.

    A plugin that fails to load is logged and left out: one broken package must not
    take the agent down with the scripts that work.
    """
    scripts: dict[str, Script] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            factory = ep.load()
            script = factory(host)
        except Exception as exc:
            log.error("script.load_failed", entry_point=ep.name, value=ep.value, error=str(exc))
            continue
        if not isinstance(script, Script):
            log.error("script.not_a_script", entry_point=ep.name, value=ep.value)
            continue
        scripts[script.name] = script
    return scripts
