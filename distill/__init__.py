"""distill: turn accepted rationales into a fine-tuned student model.

Heavy dependencies (torch, transformers, peft, trl, unsloth) are imported only inside the
functions that train, never at import time.
"""

from __future__ import annotations

from rationale.errors import RationaleError

__all__ = ["DistillError"]


class DistillError(RationaleError):
    """Base class of the errors raised by `distill` (a `rationale.RationaleError`)."""
