"""SIGTERM during `rationale eval` (docker stop, a scheduler's timeout): stop, then finalise.

One handler stays in place from the first eval.json to the last. While the API path's event loop
runs, SIGTERM cancels the eval's task (requests in flight are dropped, every finished case is on
disk); during local generation it raises `Terminated` in the main thread; while eval.json is
being finalised it is held, and the eval stops once the file is written. asyncio's own handler
(``loop.add_signal_handler``) is not used: closing the loop resets SIGTERM to its default
action, so a SIGTERM during the finalisation killed the process and eval.json said "running".
"""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any


class Terminated(BaseException):
    """SIGTERM (docker stop, a scheduler's timeout) during an eval: finalise, then stop."""


class SigtermGuard:
    """The eval's SIGTERM handler between `install` and `restore`; ``came`` once one arrived.

    Off the main thread (a worker thread of Ray or of a library caller) nothing is installed
    and SIGTERM keeps what the process set.
    """

    def __init__(self) -> None:
        self.came = False
        self._held = False
        self._task: tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = None
        self._previous: Any = None

    def install(self) -> SigtermGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def restore(self) -> None:
        if self._previous is not None:  # None: not installed, or not set from Python
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def cancel_this_task(self) -> None:
        """Called in the eval's task: from now on SIGTERM cancels it (in its loop)."""
        task = asyncio.current_task()
        self._task = (asyncio.get_running_loop(), task) if task is not None else None

    def hold(self) -> None:
        """From now on SIGTERM only sets ``came``: what is left is writing the results."""
        self._task, self._held = None, True

    def _handle(self, signum: int, frame: Any) -> None:
        self.came = True
        if self._task is not None:
            loop, task = self._task
            loop.call_soon_threadsafe(task.cancel)
        elif not self._held:
            raise Terminated
