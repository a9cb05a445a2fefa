"""What makes N shard folders one job, so `rationale merge` may join them.

- every shard 1..N given once, each finished (nothing pending);
- one job: the same identity (input, teacher or model by content, template version, seed, ...)
  and the same value of every setting that decides which records exist or what they hold,
  that is every config key but the operational ones (`rationale.stamps.OPERATIONAL`:
  concurrency, rate limits, timeouts, budget, batch, ...), the output folder and the shard;
- the input they were cut from unchanged since they ran (its sha256 then and now);
- together, every step of that input (an eval: every case of its case set) in exactly one
  shard's records. ``--limit`` counts within each shard, so limited shards merge only when each
  stayed within its limit and the merged records are the whole input.

Each refusal says what differs or what is missing (the first few, and how many) and the fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rationale.errors import RationaleError

__all__ = ["check_coverage", "check_input", "check_shards", "eval_cases", "run_steps"]

#: Config keys that say where and which part, never what a record holds.
_PLACE = {"output", "shard"}
_SHOWN = 3  # missing steps named in a refusal; the rest are counted


def check_shards(paths: list[Path], infos: list[dict[str, Any]], what: str) -> int:
    """Every shard 1..N once, all of one job (see the module docstring), each finished;
    returns N."""
    from rationale.stamps import OPERATIONAL

    ignored = OPERATIONAL["eval" if what == "eval" else "synth"] | _PLACE
    shards: dict[int, Path] = {}
    n_seen: set[int] = set()
    first = _decisive(infos[0], ignored)
    for path, info in zip(paths, infos, strict=True):
        shard = info["identity"].get("shard")
        if not shard:
            raise RationaleError(f"{path}: not a shard ({what} without --shard); nothing to merge")
        k, n = (int(x) for x in shard.split("/"))
        n_seen.add(n)
        if k in shards:
            raise RationaleError(f"shard {shard} is given twice: {shards[k]} and {path}")
        shards[k] = path
        mine = _decisive(info, ignored)
        # the identity first (what answered, by content), then the settings as given
        diff = _differences(first[0], mine[0]) or _differences(first[1], mine[1])
        if diff:
            raise RationaleError(
                f"{path} is a shard of another {what} than {paths[0]} ({diff}); merge the shards "
                "of one job: run every shard with the same settings (only operational ones such "
                "as --concurrency, --rpm or --max-cost may differ)"
            )
        if info.get("pending"):
            raise RationaleError(
                f"{path} (shard {shard}) has {info['pending']} pending; finish it first (rerun "
                "the same command)"
            )
    if len(n_seen) > 1:
        raise RationaleError(f"the shards split into different N: {sorted(n_seen)}")
    n = n_seen.pop()
    missing = [k for k in range(1, n + 1) if k not in shards]
    if missing:
        raise RationaleError(
            f"shard {missing[0]}/{n} is missing"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f": run the {what} with --shard {missing[0]}/{n} and give its folder too"
        )
    return n


def _decisive(info: dict[str, Any], ignored: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The identity, and the config less what only decides how (or where) the job ran."""
    identity = {k: v for k, v in info["identity"].items() if k != "shard"}
    config = {k: v for k, v in (info.get("config") or {}).items() if k not in ignored}
    return identity, config


def _differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    """``key a vs b`` for every key whose values differ, or "" when none does."""
    changed = sorted(key for key in set(a) | set(b) if a.get(key) != b.get(key))
    return ", ".join(f"{key} {a.get(key)!r} vs {b.get(key)!r}" for key in changed)


def check_input(paths: list[Path], infos: list[dict[str, Any]], file: Path,
                digests: list[str | None]) -> None:  # fmt: skip
    """The input the shards were cut from has the bytes it had when each ran."""
    from rationale.identity import file_digest

    if not file.is_file():
        raise RationaleError(
            f"{file}: the input the shards were cut from is gone; restore it to merge them"
        )
    now = file_digest(file, remember=False)
    for path, info, then in zip(paths, infos, digests, strict=True):
        shard = info["identity"].get("shard")
        if then is None:
            raise RationaleError(
                f"{path} (shard {shard}) records no digest of its input {file} (written before "
                "merge checked it), so a change since it ran cannot be seen; rerun the same "
                "command on that folder (nothing is asked again) to record it, then merge"
            )
        if then != now:
            raise RationaleError(
                f"{file} changed since {path} ran (shard {shard}: sha256 {then[:12]} then, "
                f"{now[:12]} now), so its records were cut from other content; restore the file, "
                "or run every shard again into new folders"
            )


def check_coverage(have: Iterable[tuple[str, int]], expected: list[tuple[str, int]],
                   noun: str, source: str, limits: list[Any]) -> None:  # fmt: skip
    """The shards' records are ``expected`` (each in one shard: merge checks overlaps), no step
    missing and none from elsewhere."""
    have = set(have)
    wanted = set(expected)
    missing = [k for k in expected if k not in have]
    extra = sorted(have - wanted)
    if missing:
        limited = sorted({x for x in limits if x is not None})
        fix = (
            f"--limit counts within each shard (these ran with --limit {limited[0]}): rerun "
            "each shard's command with a larger --limit, or none, to add the rest, then merge"
            if limited
            else "rerun each shard's command to finish it, then merge"
        )
        raise RationaleError(
            f"the shards cover {len(expected) - len(missing)} of the {len(expected)} {noun} of "
            f"{source}; missing: {_listed(missing)}; {fix}"
        )
    if extra:
        raise RationaleError(
            f"the shards hold {len(extra)} {noun} that are not in {source}: {_listed(extra)}; "
            "merge the shards of one input"
        )


def _listed(keys: list[tuple[str, int]]) -> str:
    shown = ", ".join(f"session {s!r} step {n}" for s, n in keys[:_SHOWN])
    return shown + (f", and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def run_steps(info: dict[str, Any], records_file: Path) -> list[tuple[str, int]]:
    """The steps a synth or filter job's shards together hold: every kept step of the record
    file (read as the run read it); a filter's, those of its source run."""
    from rationale.records import RecordFile
    from rationale.rundir import STATES, read_synth_records
    from rationale.schema import ActionSpace

    config = info.get("config") or {}
    space = ActionSpace.from_file(config["action_space"]) if config.get("action_space") else None
    on_error = info.get("records_file_on_error") or config.get("on_error") or "fail"
    with RecordFile(records_file, space=space, on_error=on_error) as records:
        steps = list(records.step_keys())
    if info.get("command") != "filter":
        return steps
    source = Path(config["input"])
    files = [source / f"{s}.jsonl" for s in STATES] if source.is_dir() else [source]
    judged = {rec.key for f in files if f.is_file()
              for _, rec in read_synth_records(f, on_error="skip", skipped=[])}  # fmt: skip
    return [k for k in steps if k in judged]


def eval_cases(config: dict[str, Any]) -> list[tuple[str, int]]:
    """The cases of an eval's test file with no ``--limit``: every kept step, less each
    session's first under ``--cases from-second`` (`rationale.eval_cases`)."""
    from rationale.records import RecordFile
    from rationale.schema import ActionSpace

    space = ActionSpace.from_file(config["action_space"]) if config.get("action_space") else None
    with RecordFile(config["data"], space=space, on_error=config.get("on_error", "fail")) as rf:
        steps = list(rf.step_keys())
    if config.get("cases", "from-second") == "all":
        return steps
    first: dict[str, int] = {}
    for session, step in steps:
        first[session] = min(step, first.get(session, step))
    return [(s, n) for s, n in steps if n != first[s]]
