"""Taking turns at CPU-bound work, first come first served.

The error budget reads a fresh file whole before its first request. When hundreds of
companies drop files at once, hundreds of threads did that at once, all runnable and all
wanting the one GIL, and the lanes already sending lost their pace (one fell to 75-80% of
its first minute at 500 companies). Taking turns keeps the runnable set small: one file is
read at a time, in the order they asked, each for a slice at most (so a huge file cannot
hold up the others), and the rest sleep without asking for the GIL. How the reader also
yields to the lanes sending is the pipeline's (``pipeline.READ_AHEAD``).
"""

from __future__ import annotations

import threading
from collections import deque

from ingestor.errors import Interrupted


class Turns:
    """At most ``slots`` holders at a time; waiters are served in the order they came."""

    def __init__(self, slots: int) -> None:
        self._lock = threading.Lock()
        self._free = slots
        self._waiting: deque[threading.Lock] = deque()

    def acquire(self, stop: threading.Event) -> None:
        """Wait for a turn; Interrupted if ``stop`` is set meanwhile."""
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return
            me = self._queued()
        self._wait(me, stop)

    def release(self) -> None:
        """End a turn: the slot goes to the first waiter, if any."""
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()  # handed on: never free in between
            else:
                self._free += 1

    def pass_turn(self, stop: threading.Event) -> None:
        """Let the first waiter go before continuing (nothing to do if nobody waits)."""
        with self._lock:
            if not self._waiting:
                return
            me = self._queued()
            self._waiting.popleft().release()
        self._wait(me, stop)

    def turn(self, stop: threading.Event) -> Turn:
        """A turn for a ``with`` block (waited for on entry, ended on exit)."""
        return Turn(self, stop)

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def _queued(self) -> threading.Lock:
        """A held lock at the back of the queue, released when its waiter's turn comes
        (called with ``_lock`` held)."""
        me = threading.Lock()
        me.acquire()
        self._waiting.append(me)
        return me

    def _wait(self, me: threading.Lock, stop: threading.Event) -> None:
        while not me.acquire(timeout=0.25):
            if stop.is_set():
                with self._lock:
                    if me in self._waiting:  # not handed a slot: just leave the queue
                        self._waiting.remove(me)
                        raise Interrupted("stop requested while waiting for a turn")
                # Handed a slot as the stop came: pass it on, then leave.
                self.release()
                raise Interrupted("stop requested while waiting for a turn")


class Turn:
    """One holder's turn. A stop while it waits to go on after ``pass_on`` leaves it holding
    nothing, so the exit gives back only what it holds."""

    def __init__(self, turns: Turns, stop: threading.Event) -> None:
        self._turns, self._stop, self._held = turns, stop, False

    def __enter__(self) -> Turn:
        self._turns.acquire(self._stop)
        self._held = True
        return self

    def pass_on(self) -> None:
        """Let the first waiter go before going on (``Turns.pass_turn``)."""
        self._held = False
        self._turns.pass_turn(self._stop)
        self._held = True

    def __exit__(self, *_: object) -> None:
        if self._held:
            self._turns.release()
