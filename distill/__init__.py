"""distill: turn accepted rationales into a fine-tuned student model.

Heavy dependencies (torch, transformers, peft, trl, unsloth) are imported only inside the
functions that train, never at import time; the public names below load lazily.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from distill.errors import DistillError

__all__ = ["DistillConfig", "DistillError", "SFTData", "run_distill"]

_WHERE = {
    "DistillConfig": "distill.config",
    "SFTData": "distill.data",
    "run_distill": "distill.pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'distill' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from distill.config import DistillConfig
    from distill.data import SFTData
    from distill.pipeline import run_distill
