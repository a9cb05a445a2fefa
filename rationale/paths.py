"""Where the tool keeps its state and finds its shipped prompt templates."""

from __future__ import annotations

import os
from pathlib import Path

from rationale.errors import RationaleError

#: The one environment variable that relocates all state the tool keeps (indexes, caches, runs).
HOME_ENV = "RATIONALE_HOME"


def state_dir() -> Path:
    """The folder for everything the tool keeps between runs.

    ``$RATIONALE_HOME`` if set, else ``$XDG_CACHE_HOME/rationale``, else ``~/.cache/rationale``.
    """
    if home := os.environ.get(HOME_ENV):
        path = Path(home)
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(cache) / "rationale"
    path.mkdir(parents=True, exist_ok=True)
    return path


def prompts_dir() -> Path:
    """The folder of shipped Jinja prompt templates.

    In an installed wheel the top-level ``prompts/`` folder lives at ``rationale/prompts``; in a
    source checkout (and an editable install, which does not see force-included folders) it is
    the ``prompts/`` folder beside the package.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "prompts", here.parent / "prompts"):
        if candidate.is_dir():
            return candidate
    raise RationaleError(
        f"no prompts folder next to {here}: reinstall the package (pip install rationale-distill)"
    )
