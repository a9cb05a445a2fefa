"""`DistillError`, the base of distill's errors, in a module of its own.

Every distill module imports it from here rather than from the package, so the package's
``__init__`` (which names its submodules for the lazy public names) and the submodules never
import each other: the import graph stays one-way.
"""

from __future__ import annotations

from rationale.errors import RationaleError

__all__ = ["DistillError"]


class DistillError(RationaleError):
    """Base class of the errors raised by `distill` (a `rationale.RationaleError`)."""
