"""Helpers shared by the tests (tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_MIND2WEB = ROOT.parent / "shared" / "data" / "mind2web"


def record(session_id: str = "s1", step: int = 0, **fields: object) -> dict:
    """A valid record dict (a click), with fields overridden."""
    data: dict = {
        "session_id": session_id,
        "step": step,
        "context": "<button name='search'>Search</button>",
        "action": {"type": "click", "name": "search"},
    }
    data.update(fields)
    return data


def write_lines(path: Path, lines: list[object]) -> Path:
    """Write each item as a JSONL line (str items are written raw)."""
    with open(path, "w", encoding="utf-8") as f:
        for item in lines:
            f.write((item if isinstance(item, str) else json.dumps(item)) + "\n")
    return path


def modules_loaded_by(module: str, prefixes: tuple[str, ...]) -> set[str]:
    """The modules under ``prefixes`` that importing ``module`` loads, in a fresh interpreter."""
    import subprocess
    import sys

    code = (
        f"import sys, {module}\n"
        f"print(*sorted(m for m in sys.modules if m.startswith({prefixes!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def wait_for_cases(folder: Path, n: int, timeout: float = 60.0) -> None:
    """Wait until an eval folder's cases.jsonl holds ``n`` finished cases (or ``timeout``)."""
    import time

    cases = folder / "cases.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cases.exists() and cases.read_text().count("\n") >= n:
            return
        time.sleep(0.05)
