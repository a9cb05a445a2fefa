"""A persistent cache of model responses, so no answer is ever paid for twice.

One sqlite file, ``$RATIONALE_HOME/cache/responses.sqlite`` (WAL mode: several runs may share it).
The key is a hash of everything that determines an answer: the model, the messages, the sampling
parameters, the sample index and the template version (`cache_key`). Only successful responses
are stored, and only what came back (text, token counts, cost): never a request header or key.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from rationale.paths import state_dir


def cache_key(
    *,
    model: str,
    messages: list[dict[str, str]],
    params: dict[str, Any],
    sample: int,
    template_version: str,
) -> str:
    """sha256 over the canonical JSON of everything that determines a response."""
    payload = json.dumps(
        {
            "model": model,
            "messages": messages,
            "params": params,
            "sample": sample,
            "template_version": template_version,
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class ResponseCache:
    """``get(key)`` / ``put(key, value)`` of JSON-able response dicts, persisted at once."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else state_dir() / "cache" / "responses.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses "
            "(key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"
        )

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT value FROM responses WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO responses VALUES (?,?,?)",
            (key, json.dumps(value, ensure_ascii=False), time.time()),
        )

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        self._db.close()
