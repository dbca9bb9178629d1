"""The script catalogue: which scripts exist and how their `script_config` is checked.

`post` is built in and validated by its pydantic model. Plugin scripts are announced by
the agents that carry them, each with a JSON Schema; the gateway and the scheduler keep
those schemas and validate with them, so a bad config is refused before a task exists.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from fleet_contracts.scripts.post import PostConfig
from fleet_contracts.scripts.spintax import spin
from fleet_contracts.validation import describe

BUILTIN_CONFIGS: dict[str, type[BaseModel]] = {"post": PostConfig}


class ScriptSpec(BaseModel):
    """One entry of the catalogue, as announced on the bus and answered by the API."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    description: str = ""
    config_schema: dict[str, Any]
    builtin: bool = False


class UnknownScriptError(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"script_name: {name!r} is not a supported script (supported: {', '.join(known)})"
        )
        self.name = name


class ScriptConfigError(ValueError):
    """`script_config` does not fit the script's schema; the message names the field."""


def builtin_specs() -> list[ScriptSpec]:
    return [
        ScriptSpec(
            name=name,
            description=(model.__doc__ or "").strip().splitlines()[0],
            config_schema=model.model_json_schema(),
            builtin=True,
        )
        for name, model in BUILTIN_CONFIGS.items()
    ]


def validate_script_config(
    name: str,
    config: Mapping[str, Any],
    plugins: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Check `config` against script `name`; return it with defaults filled in.

    `plugins` maps plugin script names to their JSON Schemas.
    """
    plugins = plugins or {}
    model = BUILTIN_CONFIGS.get(name)
    if model is not None:
        try:
            return model.model_validate(dict(config)).model_dump(mode="json")
        except ValidationError as exc:
            raise ScriptConfigError(describe(exc, "script_config")) from exc
    schema = plugins.get(name)
    if schema is None:
        raise UnknownScriptError(name, sorted({*BUILTIN_CONFIGS, *plugins}))
    # Imported here: only plugin scripts need it, and it is a twentieth of a second of
    # every service start.
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    problems = sorted(validator.iter_errors(dict(config)), key=lambda e: list(e.path))
    if problems:
        raise ScriptConfigError(
            "; ".join(
                "script_config"
                + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.path)
                + f": {err.message}"
                for err in problems
            )
        )
    return dict(config)


def personalise(name: str, config: Mapping[str, Any], rng: random.Random) -> dict[str, Any]:
    """The config one task runs with: spintax in `post` captions resolved per task."""
    result = dict(config)
    if name == "post" and isinstance(result.get("captions"), str):
        result["captions"] = spin(result["captions"], rng)
    return result
