"""The script catalogue: the built-in `post` plus every plugin an agent announced in
the KV bucket `scripts`, and the create-time checks that use it (40003 for an unknown
script, 40001 naming `script_config.<field>` for a config that does not fit)."""

from __future__ import annotations

from typing import Any

import jsonschema
from pydantic import ValidationError

from fleet_api.errors import ApiError
from fleet_contracts.codes import ErrorCode
from fleet_contracts.scripts import (
    BUILTIN_CONFIGS,
    ScriptConfigError,
    ScriptSpec,
    UnknownScriptError,
    builtin_specs,
    validate_script_config,
)


def parse_spec(key: str, raw: bytes) -> ScriptSpec | None:
    try:
        spec = ScriptSpec.model_validate_json(raw)
    except ValidationError:
        return None
    # A plugin may not shadow a built-in: `post` always means the contract's `post`.
    if spec.name in BUILTIN_CONFIGS:
        return None
    try:
        jsonschema.Draft202012Validator.check_schema(spec.config_schema)
    except jsonschema.SchemaError:
        return None  # a broken schema could not check any config: leave the script out
    return spec


def all_specs(plugins: dict[str, ScriptSpec]) -> list[ScriptSpec]:
    return [*builtin_specs(), *sorted(plugins.values(), key=lambda s: s.name)]


def check_config(
    name: str, config: dict[str, Any], plugins: dict[str, ScriptSpec]
) -> dict[str, Any]:
    """`config` with defaults filled in, or the 400 that says what to fix."""
    schemas = {spec.name: spec.config_schema for spec in plugins.values()}
    try:
        return validate_script_config(name, config, schemas)
    except UnknownScriptError as exc:
        raise ApiError(ErrorCode.SCRIPT_NOT_SUPPORTED, str(exc)) from exc
    except ScriptConfigError as exc:
        raise ApiError(ErrorCode.INVALID_PARAMETERS, str(exc)) from exc
