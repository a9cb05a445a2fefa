"""What `rationale run` remembers of a finished stage: a stamp holding its fingerprint.

A stage's fingerprint covers what decides its result and nothing else:

- its settings, less the ones that only decide how it runs (concurrency, rate limits, timeouts,
  retries, the budget, batch size, engine): a new ``--rpm`` does not retrain a student;
- the bytes of each input no earlier stage writes (the raw logs, a record file, a synth run
  named directly), so an edited input file is seen;
- the stamps of the stages it reads (fingerprint and finish time), so a stage that ran again
  makes every stage reading it run again, even when it ran with ``--from``/``--until``;
- an eval's identity (`rationale.eval_config`): its model by content (weights, endpoint) and
  its template, so a model retrained at the same path outside the workflow is seen.

A stamp is written only when a stage finished; it also keeps the resolved settings (secrets
redacted) and the wall time, so ``runs/.stamps/`` says what made each output.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

from rationale.errors import redact

#: Settings that change how a stage runs, not what it produces.
OPERATIONAL = {
    "synth": {"concurrency", "rpm", "tpm", "timeout", "request_attempts", "backoff", "max_cost",
              "client", "dry_run", "retry_failed", "batch", "wait", "poll_interval"},
    "eval": {"concurrency", "rpm", "tpm", "timeout", "request_attempts", "backoff", "max_cost",
             "client", "batch_size", "engine", "threads", "batch", "wait", "poll_interval"},
    "distill": {"resume", "allow_cpu", "logging_steps", "save_steps", "save_total_limit"},
}  # fmt: skip


#: Settings added after stamps were first written, left out while at these defaults: a new
#: field must not make every stage that ran before run again (or refuse a trained student).
ADDED_LATER: dict[str, dict[str, Any]] = {"distill": {"action_space": None}}


def settings(kind: str, config: Any) -> dict[str, Any]:
    """The settings of a stage that decide its result."""
    data = json.loads(config.model_dump_json())
    later = ADDED_LATER.get(kind, {})
    return {
        k: v
        for k, v in data.items()
        if k not in OPERATIONAL.get(kind, ()) and not (k in later and v == later[k])
    }


def digest(path: Path) -> str:
    """The bytes of a file, of every file under a folder (a synth run: its accepted.jsonl)."""
    if path.is_dir():
        accepted = path / "accepted.jsonl"
        files = (
            [accepted] if accepted.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        )
        h = hashlib.sha256()
        for p in files:
            h.update(str(p.relative_to(path)).encode() + b"\0" + digest(p).encode())
        return h.hexdigest()
    from rationale.identity import file_digest

    try:
        return file_digest(path, remember=False)
    except OSError:
        return "missing"


def fingerprint(name: str, kind: str, config: Any, external: list[Path],
                producers: list[dict[str, Any]]) -> str:  # fmt: skip
    """A stage's fingerprint: settings, the bytes of its external inputs, its producers' stamps;
    an eval's also what it reads by content (its identity: the model's weights or endpoint, the
    template), so weights replaced at the same path make it run again."""
    h = hashlib.sha256(name.encode())
    h.update(json.dumps(settings(kind, config), sort_keys=True).encode())
    if kind == "eval":
        h.update(json.dumps(config.identity(), sort_keys=True).encode())
    for path in external:
        h.update(f"{path}\0{digest(path)}".encode())
    for stamp in producers:
        h.update(f"{stamp.get('fingerprint', '-')}\0{stamp.get('id', '-')}".encode())
    return h.hexdigest()


def read(path: Path) -> dict[str, Any]:
    """A stamp (or any JSON object file), or {} when there is none (or it is torn)."""
    try:
        stamp = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def write(path: Path, name: str, fp: str, config: Any, wall_s: float,
          producers: dict[str, str]) -> None:  # fmt: skip
    """Record that a stage finished (atomically), with the ids of the stamps it read."""
    from rationale.rundir import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {
        "stage": name, "fingerprint": fp, "wall_s": round(wall_s, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "id": uuid.uuid4().hex,
        "producers": producers, "config": json.loads(redact(config.model_dump_json())),
    })  # fmt: skip
