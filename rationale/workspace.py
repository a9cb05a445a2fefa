"""The workspace file, ``rationale.toml``: one table of settings per stage, and where stages meet.

A workspace file holds the tables ``[import]``, ``[split]``, ``[synth]``, ``[distill]``,
``[eval]`` and ``[compare]``; their keys are the commands' long flag names (``max-cost``; the
``_`` spelling is read too) and every key is checked against the stage's job model
(`ImportConfig`, `SplitConfig`, `SynthConfig`, `DistillConfig`, `EvalConfig`, `CompareConfig`),
so a typo is an error that names the file, the table, the key and the nearest valid name.

It is found like pyproject.toml: an explicit path (``--config FILE``), else ``$RATIONALE_CONFIG``,
else ``rationale.toml`` in the working directory or the nearest parent. Relative paths in it are
relative to its folder, the workspace root, and so are the default outputs under ``runs/``.

`Workspace.resolve` gives one stage's settings: the flags given, over the file's table, over the
defaults that chain the stages (the synth input is the split's train file, the distill data is
the synth run, ...). Each default used comes back as a note, which the CLI prints: nothing is
guessed silently. `rationale run` (`rationale.workflow`) and the bare commands share this code.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rationale.errors import ConfigError
from rationale.workspace_check import (  # noqa: F401  (STAGES, flag, ...: re-exported)
    _NOT_SETTINGS,
    STAGES,
    check_table,
    flag,
    root_paths,
    stage_keys,
    stage_model,
)

WORKSPACE_FILE = "rationale.toml"
CONFIG_ENV = "RATIONALE_CONFIG"
RUNS = "runs"  # the default outputs, under the workspace root

#: Defaults that follow another setting (an eval folder is named for its model, a student's for
#: its base): while that one is missing, only it is named as missing.
_FOLLOWS = {"eval": {"output": "model"}, "distill": {"output": "base"}}
#: Import formats whose records use the action space the import writes beside them.
_EVENT_FORMATS = ("miniwob", "browser-log")

NO_TEACHER = (
    "synth: no teacher: pass --teacher MODEL, a litellm model string with its key in the "
    "environment (openai/gpt-4o-mini with OPENAI_API_KEY, anthropic/claude-3-5-haiku-latest with "
    "ANTHROPIC_API_KEY, ...) or 'local' (SmolLM2-135M in-process, no key, no network), or set "
    "teacher in [synth] of rationale.toml (rationale init writes one)"
)


def slug(text: str) -> str:
    """A folder name for a model: the last part of a path or hub id, without .gguf."""
    name = re.split(r"[\\/]", text.rstrip("/\\"))[-1] or text
    name = name.removesuffix(".gguf").replace(":", "-")
    return re.sub(r"[^\w.+-]+", "_", name) or "model"


def find_workspace(
    explicit: str | os.PathLike[str] | None = None, start: Path | None = None
) -> Path | None:
    """The workspace file: ``explicit``, else ``$RATIONALE_CONFIG``, else the nearest one up."""
    named = explicit or os.environ.get(CONFIG_ENV)
    if named:
        path = Path(named).expanduser()
        if path.is_dir():
            path = path / WORKSPACE_FILE
        if not path.is_file():
            source = "--config" if explicit else f"${CONFIG_ENV}"
            raise ConfigError(f"{source}: no workspace file {path}")
        return path
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / WORKSPACE_FILE).is_file():
            return folder / WORKSPACE_FILE
    return None


@dataclass
class Resolved:
    """One stage's settings, and a note for each default used (printed by the CLI)."""

    values: dict[str, Any]
    notes: list[str] = field(default_factory=list)


@dataclass
class Workspace:
    """A loaded workspace file (or none: ``path`` None, the working directory as root)."""

    root: Path
    path: Path | None = None
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def find(cls, explicit: str | None = None, start: Path | None = None) -> Workspace:
        """The workspace in effect here (see `find_workspace`); an empty one if there is none."""
        path = find_workspace(explicit, start)
        return cls.load(path) if path else cls(root=(start or Path.cwd()).resolve())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Workspace:
        """Read and check a workspace file; errors name the file, the table and the key."""
        try:
            import tomllib
        except ImportError:  # pragma: no cover  (Python 3.10)
            import tomli as tomllib  # type: ignore[no-redef]

        path = Path(path)
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8; re-encode it as UTF-8") from None
        root = path.resolve().parent
        tables = {name: check_table(path, name, value) for name, value in data.items()}
        for stage, table in tables.items():
            root_paths(root, stage, table)
        return cls(root=root, path=path, tables=tables)

    def table(self, stage: str) -> dict[str, Any]:
        """A copy of a stage's table (field names; paths made absolute)."""
        return dict(self.tables.get(stage, {}))

    def where(self, stage: str) -> str:
        """How notes name a stage's table."""
        return f"{show(self.path)} [{stage}]" if self.path else f"[{stage}]"

    # -- where the stages meet ---------------------------------------------------------------
    def default(self, *parts: str) -> Path:
        """A default output under the workspace root's ``runs/`` (``runs-<stem>/`` for a
        workspace file of another name, so two files in one folder never share outputs)."""
        runs = (
            RUNS
            if self.path is None or self.path.name == WORKSPACE_FILE
            else f"{RUNS}-{self.path.stem}"
        )
        return self.root.joinpath(runs, *parts)

    def import_output(self) -> Path:
        return Path(self.tables.get("import", {}).get("output") or self.default("records.jsonl"))

    def import_action_space(self) -> Path | None:
        """The action-space file the workspace's import writes beside its records (miniwob,
        browser-log: their steps include a ``type`` action), else None (the default space)."""
        table = self.tables.get("import", {})
        if table.get("format") not in _EVENT_FORMATS:
            return None
        from rationale.importers import action_space_path

        return action_space_path(self.import_output())

    def split_input(self) -> Path | None:
        given = self.tables.get("split", {}).get("input")
        if given:
            return Path(given)
        return self.import_output() if "import" in self.tables else None

    def split_output(self) -> Path | None:
        if "split" not in self.tables:
            return None
        return Path(self.tables["split"].get("output") or self.default("split"))

    def synth_input(self) -> Path | None:
        given = self.tables.get("synth", {}).get("input")
        if given:
            return Path(given)
        split = self.split_output()
        if split is not None:
            return split / "train.jsonl"
        return self.import_output() if "import" in self.tables else None

    def synth_output(self, input_file: str | Path | None = None) -> Path | None:
        given = self.tables.get("synth", {}).get("output")
        if given:
            return Path(given)
        source = input_file or self.synth_input()
        return self.default("synth", Path(source).stem) if source else None

    def eval_data(self) -> Path | None:
        given = self.tables.get("eval", {}).get("data")
        if given:
            return Path(given)
        split = self.split_output()
        return split / "test.jsonl" if split is not None else None

    def distill_output(self, base: str, *, no_rationale: bool = False) -> Path:
        return self.default("distill", slug(base) + ("-actions" if no_rationale else ""))

    # -- one stage's settings ----------------------------------------------------------------
    def resolve(self, stage: str, given: dict[str, Any] | None = None) -> Resolved:
        """``given`` (the flags typed) over the stage's table over the chaining defaults."""
        values = {**self.table(stage), **(given or {})}
        notes = []
        if self.path and self.tables.get(stage):
            taken = [flag(k) for k in self.tables[stage] if k not in (given or {})]
            if taken:
                notes.append(f"{stage}: from {self.where(stage)}: {', '.join(taken)}")

        def fill(key: str, value: Any, why: str) -> None:
            if values.get(key) in (None, "", []) and value is not None:
                values[key] = str(value) if isinstance(value, Path) else value
                notes.append(f"{stage}: --{flag(key)} {show(value)} ({why})")

        if stage in ("split", "synth", "eval") or (stage == "distill" and values.get("data")):
            # the import's own space, read by every stage (a synth run folder declares its own)
            fill("action_space", self.import_action_space(), "the workspace's import writes it")
        if stage == "import":
            fill("output", self.import_output(), "default")
        elif stage == "split":
            fill("input", self.split_input(), "the workspace's import output")
            fill("output", self.split_output() or self.default("split"), "default")
        elif stage == "synth":
            if values.get("input") is None:
                fill("input", self.synth_input(), "the workspace's training split")
            fill("output", self.synth_output(values.get("input")), "default; -o to choose")
            if not values.get("teacher"):
                raise ConfigError(NO_TEACHER)
        elif stage == "distill":
            self._distill_defaults(values, fill)
        elif stage == "eval":
            fill("data", self.eval_data(), "the workspace's test split")
            if values.get("model"):
                model = Path(str(values["model"])).expanduser()
                name = f"{model.parent.name}-{model.name}" if model.is_dir() else values["model"]
                fill("output", self.default("eval", slug(name)), "default")
                # [eval] template is for prompt-only models: a student (a distill output,
                # rationale.predictor) is prompted as it was trained, and refuses --template
                student = (model / "prompt_format.json").is_file()
                if student and values.get("template") and "template" not in (given or {}):
                    values["template"] = None
                    notes.append(
                        f"eval: template of {self.where(stage)} left out: {show(model)} is a "
                        "student, prompted with the template it was trained on"
                    )
        elif stage == "compare":
            fill("output", self.default("compare"), "default")
        return Resolved(values, notes)

    def build(self, stage: str, given: dict[str, Any] | None = None,
              defaults: dict[str, Any] | None = None) -> tuple[Any, list[str]]:  # fmt: skip
        """A stage's job config (`resolve` over ``defaults``, the flags' own), and its notes."""
        resolved = self.resolve(stage, given)
        values = {**(defaults or {}), **resolved.values}
        return self.validate(stage_model(stage), values, stage), resolved.notes

    def validate(self, model: Any, values: dict[str, Any], stage: str | None) -> Any:
        """``model(**values)``; a bad or missing value is one line naming the flag and table."""
        from pydantic import ValidationError

        try:
            return model(**values)
        except ValidationError as exc:
            problems = []
            errors = exc.errors(include_url=False)
            missing = {".".join(map(str, e["loc"])) for e in errors if e["type"] == "missing"}
            for e in errors:
                name = ".".join(map(str, e["loc"]))
                if _FOLLOWS.get(stage or "", {}).get(name) in missing:
                    continue  # named once what it follows is given
                if e["type"] == "missing":
                    table = f" or {flag(name)} in [{stage}] of rationale.toml" if stage else ""
                    problems.append(f"{name}: missing (--{flag(name)}{table})")
                else:
                    problems.append(f"{name}: {e['msg']}")
            where = f"{self.path} [{stage}]" if self.path and stage else str(self.path or "flags")
            raise ConfigError(f"{where}: {'; '.join(problems)}") from None

    def reference_eval(self, name: str | None, arms: Sequence[str], ready: Sequence[str],
                       where: str, unready: str) -> str | None:  # fmt: skip
        """The eval folder a compare reference names here: an arm's name (one of ``arms``; it
        wins over a folder of that name, as in [compare]) is runs/eval/<arm>, which must be one
        of ``ready`` (``unready`` says why one is not); anything else must be an eval folder
        that exists. An error names ``where`` the reference was given and lists the arms."""
        if name is None:
            return None
        if name in arms:
            if name not in ready:
                raise ConfigError(f"{where} {name!r}: the arm {name} has no eval ({unready}); the "
                                  f"arms with one: {', '.join(ready) or 'none'}")  # fmt: skip
            return str(self.default("eval", name))
        if Path(name).expanduser().exists():
            return name
        of = f" of {show(self.path)}" if self.path else ""
        raise ConfigError(
            f"{where} {name!r}: neither an eval folder nor an arm{of} (arms: {', '.join(arms)}); "
            "give an arm's name or the -o folder of a finished `rationale eval`"
        )

    def _distill_defaults(self, values: dict[str, Any], fill: Any) -> None:
        if not values.get("data"):
            synth = self.synth_output()
            if synth is not None:
                fill("data", synth, "the workspace's synth output")
            else:
                runs = sorted(p.parent for p in self.default("synth").glob("*/run.json"))
                if len(runs) == 1:
                    fill("data", runs[0], "the only synth run under runs/synth")
                elif runs:
                    raise ConfigError(
                        "distill: no --data, and several synth runs under "
                        f"{show(self.default('synth'))}: {', '.join(p.name for p in runs)}; "
                        "pass --data RUN_DIR"
                    )
        if not values.get("data"):
            raise ConfigError(
                "distill: no --data: pass --data RUN_DIR (a synth run folder), or set data in "
                "[distill] of rationale.toml, or run it in a workspace whose [synth] has run"
            )
        if values.get("base"):
            out = self.distill_output(values["base"], no_rationale=bool(values.get("no_rationale")))
            fill("output", out, "default; -o to choose")


def show(path: Any) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    if not isinstance(path, (str, Path)):
        return str(path)
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve())) if p.is_absolute() else str(p)
    except ValueError:
        return str(p)
