"""What a run's checkpoints were trained with, so a resume continues only the same training.

A fresh run writes ``checkpoints/resume.json`` before it trains (`write_record`): the settings
that decide the weights (`weight_settings`), a digest of the training data's bytes
(`data_digest`) and the base model's identity (`base_identity`). A resume compares them with
its own config (`changes`); `check_resume` refuses a difference with a message that names it and
the fix, and `rationale run` moves the folder aside and trains afresh instead. Without the
record, a resume would continue the old weights under a new learning rate or data while the
run's config.json (and the workflow's stamp) claimed the new settings made them.

Which settings decide the weights: every `DistillConfig` field but the operational ones
(`OPERATIONAL`: `rationale.stamps.OPERATIONAL`'s for distill, and where the run is written, what
is saved after training, memory-saving recomputation, the handling of bad lines, which leaves the
data that trains as it is or fails). ``data`` and ``base`` are compared by what they hold, not by
how they are spelled. ``max_steps`` and ``epochs`` count: the learning-rate schedule (warm-up,
decay) is laid out over the total steps, so a longer or shorter run is another training from its
first step on; it is refused, not extended.

A folder written before the record existed has none: it still resumes, unchecked, with a note.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distill.errors import DistillError
from rationale.stamps import OPERATIONAL as STAGE_OPERATIONAL

if TYPE_CHECKING:
    from distill.config import DistillConfig

__all__ = [
    "OPERATIONAL",
    "RECORD",
    "base_identity",
    "changes",
    "check_resume",
    "data_digest",
    "read_record",
    "weight_settings",
    "write_record",
]

RECORD = "resume.json"
VERSION = 1

#: Settings that do not decide the trained weights (``data`` and ``base`` are compared by content).
OPERATIONAL = frozenset(STAGE_OPERATIONAL["distill"]) | {
    "output",  # where the run is written
    "merge",  # what is saved after training
    "gradient_checkpointing",  # recomputes activations: the same gradients, less memory
    "on_error",  # bad lines: the run fails before training, or trains on the same good lines
}
_BY_CONTENT = {"data", "base", "action_space"}  # action_space: its bytes, in `data_digest`


def weight_settings(config: DistillConfig) -> dict[str, Any]:
    """The config's settings that decide the weights, as JSON values."""
    values = json.loads(config.model_dump_json())
    return {k: v for k, v in values.items() if k not in OPERATIONAL | _BY_CONTENT}


def data_digest(data: str | Path, action_space: str | None = None) -> str:
    """A digest of the bytes training reads: a JSONL file and the action space given for it, or
    a run folder's accepted.jsonl, the record file its steps' contexts and histories come from
    and the action space it declared."""
    from rationale.errors import RationaleError
    from rationale.rundir import read_run_json, run_records_file

    path = Path(data)
    files = [path]
    if path.is_dir():
        files = [path / "accepted.jsonl"]
        with contextlib.suppress(RationaleError):  # no run.json or input: SFTData says so
            files.append(run_records_file(path))
            space = ((read_run_json(path) or {}).get("config") or {}).get("action_space")
            files += [Path(space)] if space else []
    elif action_space:
        files.append(Path(action_space))
    from rationale.identity import file_digest

    h = hashlib.sha256()
    for file in files:
        h.update((file_digest(file, remember=False) if file.is_file() else "missing").encode())
        h.update(b"\0")
    return h.hexdigest()


def base_identity(base: str) -> str:
    """The base model's identity: a local file or folder by the digest of its weight, config
    and tokenizer files (`rationale.identity`: read once, then cached beside them, as eval
    does); an alias or hub id is itself."""
    from rationale.identity import file_digest, folder_digest

    path = Path(base).expanduser()
    if not path.exists():
        return base
    path = path.resolve()
    return file_digest(path) if path.is_file() else folder_digest(path)


def _record(config: DistillConfig) -> dict[str, Any]:
    return {
        "version": VERSION,
        "settings": weight_settings(config),
        "data": {"path": config.data, "digest": data_digest(config.data, config.action_space)},
        "base": {"name": config.base, "identity": base_identity(config.base)},
    }


def write_record(config: DistillConfig, checkpoints: Path) -> None:
    """Write ``checkpoints/resume.json`` for a run that starts training (atomically)."""
    from rationale.rundir import write_json

    checkpoints.mkdir(parents=True, exist_ok=True)
    write_json(checkpoints / RECORD, _record(config))


def read_record(checkpoints: Path) -> dict[str, Any] | None:
    """The record of a checkpoint folder, or None when it has none (or it cannot be read)."""
    try:
        record = json.loads((checkpoints / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def changes(record: dict[str, Any], config: DistillConfig) -> list[str]:
    """What differs between a record and ``config``, one phrase each (empty: the same training).

    Settings are compared where both sides have them: a field added to `DistillConfig` after
    the record was written, or removed since, is not a change.
    """
    now = _record(config)
    was = record.get("settings") or {}
    found = [
        f"{k} {was[k]!r} -> {v!r}" for k, v in now["settings"].items() if k in was and was[k] != v
    ]
    for key, name_key, value_key, what in (
        ("base", "name", "identity", "its files"),
        ("data", "path", "digest", "its content"),
    ):
        old, new = record.get(key) or {}, now[key]
        if old.get(value_key) == new[value_key]:
            continue
        if old.get(name_key) == new[name_key]:
            found.append(f"{key}: {new[name_key]} changed ({what})")
        else:
            found.append(f"{key} {old.get(name_key)!r} -> {new[name_key]!r}")
    return found


def check_resume(config: DistillConfig, checkpoints: Path, last: Path) -> bool:
    """Refuse to resume ``last`` under settings, data or a base other than its run's.

    Returns whether the folder had a record to check (False: written before records existed;
    it resumes unchecked). Raises `DistillError` naming each change and the fix.
    """
    record = read_record(checkpoints)
    if record is None:
        return False
    found = changes(record, config)
    if found:
        raise DistillError(
            f"--resume: {last} was trained with other settings or data ({'; '.join(found)}); "
            f"continuing it would mix two trainings: train into a new --output, or delete "
            f"{checkpoints} to start over (or undo the change to resume)"
        )
    return True
