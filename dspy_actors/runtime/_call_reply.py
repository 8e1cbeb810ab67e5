"""A Call's reply future, which can hand its waiting caller the rest of the call's work.

When an uncached call's LM answer arrives (in an LM event loop's thread), what is left of
the call is the module actor's work, in the actor's turn: resume the predictor's steps
(the adapter parses the answer) and answer the ``Call``. Told to the actor, it costs a
wake-up of the actor's thread, then another of the caller's when the actor answers. A
blocking caller is waiting for exactly that answer, in a thread of its own, so
:meth:`CallReply.hand_back` gives the work to it: the caller takes the idle actor's turn
for it (``supervisors.tell_inline``), as it did to send the call. One wake-up instead of
two, and the actor's own thread stays free for what queues in its inbox.

Only a caller blocked in :meth:`CallReply.wait_here` takes work (``handle.call`` and a
pipeline's steps from a user's thread); an asyncio caller, a forward greenlet or a
stream's reader never does, and the work goes to the actor as a message, as before.
Work handed back is run exactly once: by the waiting caller, or, if its wait ends first
(its deadline), by that caller as it leaves the wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["CallReply"]


class CallReply(Future[Any]):
    """The reply future of a ``Call``; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self._waiting = False  # a caller is in wait_here: it takes work handed back
        self._handed: Callable[[], None] | None = None

    def hand_back(self, work: Callable[[], None]) -> bool:
        """Give ``work`` to the caller waiting in :meth:`wait_here`, to run in its own
        thread; False, having done nothing, if no caller waits there (or it has work
        already, or the reply is done): the sender then does it another way."""
        with self._condition:
            if not self._waiting or self._handed is not None or self.done():
                return False
            self._handed = work
            self._condition.notify_all()
            return True

    def wait_here(self, timeout: float) -> bool:
        """Wait until the reply is done, at most ``timeout`` seconds, running the work
        handed back meanwhile; whether it is done. Work handed back and not yet run when
        the wait ends runs before this returns."""
        deadline = time.monotonic() + timeout
        condition = self._condition
        try:
            while True:
                with condition:
                    self._waiting = True
                    while True:
                        if self.done():
                            return True
                        work = self._handed
                        if work is not None:
                            self._handed = None
                            break
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            return False
                        condition.wait(remaining)
                work()  # outside the lock: it may answer this very reply
        finally:
            with condition:
                self._waiting = False
                left, self._handed = self._handed, None
            if left is not None:
                left()
