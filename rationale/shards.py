"""Shards: a deterministic 1/N of the sessions, so N independent runs cover an input once.

A session belongs to shard ``K/N`` (K = 1..N) by a stable hash of its ``session_id`` alone: not
by line order, not by which other sessions the file holds, so the N runs of ``--shard 1/N`` ..
``--shard N/N`` are disjoint and together complete, on any machine, and a session's steps (and
so its histories) never straddle two shards. `rationale.merge` joins their outputs.
"""

from __future__ import annotations

import hashlib
import re

from rationale.errors import ConfigError

__all__ = ["normal_shard", "parse_shard", "shard_of"]

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"K/N"`` as (K, N) with 1 <= K <= N; None for None; a `ConfigError` otherwise."""
    if text is None:
        return None
    m = _SHARD.match(str(text))
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ConfigError(f"--shard {text!r}: give K/N with 1 <= K <= N, e.g. --shard 1/4")
    return int(m.group(1)), int(m.group(2))


def shard_of(session_id: str, n: int) -> int:
    """The shard (1..n) of a session: sha256 of its id, the first 8 bytes, modulo n."""
    digest = hashlib.sha256(session_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def normal_shard(value: str | None) -> str | None:
    """A config's ``shard`` checked and written ``K/N`` (the job models' validator)."""
    parsed = parse_shard(value)
    return None if parsed is None else f"{parsed[0]}/{parsed[1]}"
