"""Progress of a job that calls models: a bar on a terminal, plain lines otherwise; on stderr."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """A bar on a terminal, plain lines every few seconds otherwise; always on stderr."""

    def __init__(
        self,
        total: int,
        *,
        every: float = 10.0,
        label: str = "synth",
        unit: str = "records",
        show: bool = True,
        priced: bool = True,
    ) -> None:
        self.total, self.done, self.every, self.label, self.unit = total, 0, every, label, unit
        self.priced = priced  # False: no cost in the line (a training run bills nothing)
        self.start = self.last = time.monotonic()
        self.show = show  # False: silent (a library call)
        self.bar = None
        if show and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, unit=unit[:4], file=sys.stderr, dynamic_ncols=True, desc=label
            )

    def update(self, tally: Any = None) -> None:
        """One more record (or case) finished; ``tally`` gives the running cost (None: free)."""
        self.done += 1
        if not self.show:
            return
        cost = f"${tally.cost_usd if tally is not None else 0:.4f}"
        if self.bar is not None:
            if self.priced:
                self.bar.set_postfix_str(f"cost {cost}", refresh=False)
            self.bar.update(1)
            return
        now = time.monotonic()
        if now - self.last >= self.every or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else float("inf")
            # a slow unit (a training step, a CPU generation) as seconds each: "0.0/s" says nothing
            pace = f"{rate:.1f}/s" if rate >= 1 else f"{1 / rate:.1f}s each" if rate else "-"
            print(
                f"{self.label}: {self.done}/{self.total} {self.unit}, {pace}, "
                f"ETA {eta:.0f}s" + (f", cost {cost}" if self.priced else ""),
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
