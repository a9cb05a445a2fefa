"""Reading a workspace file's tables (`rationale.workspace`): each table and key is checked
against the stage's job model (a typo is an error naming the file, the table, the key and the
nearest valid name; a renamed setting says what to write instead), ``[synth.rules]`` likewise,
and relative paths are made relative to the workspace root.
"""

from __future__ import annotations

import difflib
import importlib
import os
from pathlib import Path
from typing import Any

from rationale.errors import ConfigError

STAGES: tuple[str, ...] = ("import", "split", "synth", "distill", "eval", "compare")
#: Per-invocation switches that make no sense as a standing setting.
_NOT_SETTINGS = {"dry_run", "retry_failed", "resume"}

#: Where each stage's job model lives (imported on demand: distill's needs only pydantic).
_MODELS = {
    "import": ("rationale.importers", "ImportConfig"),
    "split": ("rationale.split", "SplitConfig"),
    "synth": ("rationale.rundir", "SynthConfig"),
    "distill": ("distill.config", "DistillConfig"),
    "eval": ("rationale.evaluate", "EvalConfig"),
    "compare": ("rationale.compare", "CompareConfig"),
}


def stage_model(stage: str) -> Any:
    """The job model of a stage."""
    if stage not in _MODELS:
        raise ConfigError(f"no stage {stage!r}; the stages are {', '.join(STAGES)}")
    module, name = _MODELS[stage]
    return getattr(importlib.import_module(module), name)


def stage_keys(stage: str) -> list[str]:
    """The keys a stage's table may hold, as flag names."""
    fields = stage_model(stage).model_fields
    return sorted(flag(name) for name in fields if name not in _NOT_SETTINGS)


def flag(name: str) -> str:
    """A field name as its flag name: ``max_cost`` -> ``max-cost``."""
    return name.replace("_", "-")


#: Keys that are paths: made relative to the workspace root when relative.
_PATHS = {
    "import": {"source", "output", "sessions", "users"},
    "split": {"input", "output", "action_space"},
    "synth": {"input", "output", "action_space"},
    "distill": {"data", "output", "action_space"},
    "eval": {"data", "output", "action_space"},
    "compare": {"output"},
}
#: Keys that may be a path or a name (a template, a model alias): a path if it exists there.
_MAYBE_PATHS = {
    "synth": {"template", "verifier_template"},
    "distill": {"base"},
    "eval": {"model", "template"},
    "compare": {"reference"},
}


def check_table(path: Path, name: str, value: Any) -> dict[str, Any]:
    """Table ``name`` of the file at ``path``, its keys as field names; an unknown table or key
    is an error with the nearest valid name."""
    if name not in STAGES:
        hint = _nearest(name, STAGES)
        if not isinstance(value, dict):
            owners = [s for s in STAGES if name.replace("-", "_") in _fields(s)]
            where = f"; put it under [{owners[0]}]" if owners else ""
            raise ConfigError(
                f"{path}: '{name}' is outside a table{where} (tables: {', '.join(STAGES)})"
            )
        raise ConfigError(
            f"{path}: unknown table [{name}]{f'; did you mean [{hint}]?' if hint else ''} "
            f"(tables: {', '.join(STAGES)})"
        )
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: '{name}' must be a table ([{name}] with keys under it)")
    fields = _fields(name)
    table = {}
    for key, item in value.items():
        field_name = key.replace("-", "_")
        if field_name in _RENAMED.get(name, {}):
            raise ConfigError(f"{path}: [{name}] '{key}' {_RENAMED[name][field_name]}")
        if field_name not in fields or field_name in _NOT_SETTINGS:
            hint = _nearest(flag(field_name), stage_keys(name))
            raise ConfigError(
                f"{path}: [{name}] unknown key '{key}'"
                + (
                    f"; did you mean '{hint}'?"
                    if hint
                    else f" (keys: {', '.join(stage_keys(name))})"
                )
            )
        if field_name == "rules" and isinstance(item, dict):
            item = _check_rules(path, name, item)
        table[field_name] = item
    return table


def _check_rules(path: Path, stage: str, rules: dict[str, Any]) -> dict[str, Any]:
    """``[synth.rules]``: the same spelling rules and nearest-name errors as a stage table."""
    from rationale.rules import RulesConfig

    fields = list(RulesConfig.model_fields)
    checked = {}
    for key, value in rules.items():
        name = key.replace("-", "_")
        if name not in fields:
            hint = _nearest(flag(name), [flag(f) for f in fields])
            raise ConfigError(
                f"{path}: [{stage}.rules] unknown key '{key}'"
                + (
                    f"; did you mean '{hint}'?"
                    if hint
                    else f" (keys: {', '.join(map(flag, fields))})"
                )
            )
        checked[name] = value
    return checked


def _arms() -> tuple[str, ...]:
    from rationale.compare import ARMS

    return ARMS


# Settings that were renamed: what to write instead.
_RENAMED = {
    "distill": {
        "load_in_4bit": 'is now method: method = "qlora" (4-bit, the default) or "lora" '
        '(a 16-bit base), or "full"'
    }
}


def _fields(stage: str) -> set[str]:
    return set(stage_model(stage).model_fields)


def _nearest(word: str, choices: Any) -> str | None:
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def root_paths(root: Path, stage: str, table: dict[str, Any]) -> None:
    """Make the table's relative paths relative to the workspace root (in place)."""

    def rooted(value: Any, maybe: bool) -> Any:
        if isinstance(value, list):
            return [rooted(v, maybe) for v in value]
        if not isinstance(value, str) or not value:
            return value
        if Path(value).expanduser().is_absolute():
            return str(Path(value).expanduser())
        candidate = Path(os.path.normpath(root / value))
        explicit = value.startswith(("./", "../"))  # written as a path: one even if not there yet
        return str(candidate) if not maybe or explicit or candidate.exists() else value

    for key in list(table):
        if stage == "compare" and key == "reference" and table[key] in _arms():
            continue  # an arm's name, not a folder
        if key in _PATHS.get(stage, ()):
            table[key] = rooted(table[key], maybe=False)
        elif key in _MAYBE_PATHS.get(stage, ()):
            table[key] = rooted(table[key], maybe=True)
