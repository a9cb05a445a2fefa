"""What a provider refuses in a batch, checked before one is sent (`rationale.batch_submit`).

Both providers take custom ids of ``^[a-zA-Z0-9_-]{1,64}$`` (Anthropic documents the rule; ours
are held to it for OpenAI too), unique in a job. OpenAI takes one model per input file, at most
50,000 requests and 200 MB; Anthropic 100,000 requests and 256 MB a batch (each provider's
``max_requests`` / ``max_bytes`` keep a margin under those). A job that broke one would fail at
the provider after its wait, or be refused: here it is never sent, and the run says why.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["CUSTOM_ID", "line_bytes", "problems"]

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def line_bytes(line: dict[str, Any]) -> int:
    """The bytes one request takes in the file sent (UTF-8 JSON and its newline)."""
    return len(json.dumps(line, ensure_ascii=False).encode()) + 1


def problems(provider: Any, ids: list[str], bodies: list[dict[str, Any]]) -> list[str]:
    """Why ``provider`` would refuse a job of these requests (none: it may be sent)."""
    out = []
    bad = [cid for cid in ids if not CUSTOM_ID.match(cid)]
    if bad:
        out.append(f"custom ids {bad[:3]} do not match {CUSTOM_ID.pattern}")
    if len(set(ids)) != len(ids):
        out.append("custom ids repeat")
    models = sorted({str(body.get("model")) for body in bodies})
    if provider.name == "openai" and len(models) > 1:
        out.append(f"one model per input file, not {models}")
    if len(ids) > provider.max_requests:
        out.append(f"{len(ids)} requests, over {provider.max_requests}")
    size = sum(line_bytes(provider.line(cid, body)) for cid, body in zip(ids, bodies, strict=True))
    if size > provider.max_bytes:
        out.append(f"{size} bytes, over {provider.max_bytes}")
    return out
