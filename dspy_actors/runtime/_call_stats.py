"""Module call counts kept where the calls are answered, read when someone looks.

A module actor counts each call it ends (success or error) in its own :class:`CallCell`:
a few plain numbers, written only by the actor's turn (one thread at a time), so no lock
and no event per call. Metrics (``/metrics``) and the console read the cells when scraped
or when they push, summed per module path by :class:`CallStats`. Events stay for what is
rare (restarts, breaker transitions, dead letters) and for subscribers that asked for every
call (``app.subscribe("module.*", ...)``) or calls tracing samples.

    stats = CallStats()
    cell = stats.cell("qa")                 # a module actor's, at its start
    cell.ended(0.002)                       # one call answered in 2 ms
    cell.ended(0.5, "LMError")              # one failed
    stats.totals()["qa"].calls              # 2
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

__all__ = ["LATENCY_BUCKETS", "CallCell", "CallStats", "CallTotals"]

# Upper bounds (seconds) of the latency histogram's buckets; one more bucket for +Inf.
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Recent latencies kept per cell (a ring) for percentiles; a power of two.
RECENT = 2048
_RECENT_MASK = RECENT - 1


class CallCell:
    """One module actor's counts of the calls it ended. Only the actor writes to it."""

    __slots__ = ("buckets", "calls", "errors", "latency_sum", "recent", "recent_n")

    def __init__(self) -> None:
        self.calls = 0
        self.errors: dict[str, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.recent = [0.0] * RECENT
        self.recent_n = 0

    def ended(self, seconds: float, error_type: str | None = None) -> None:
        """A call ended after ``seconds``; ``error_type`` names its error if it failed."""
        self.calls += 1
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        n = self.recent_n
        self.recent[n & _RECENT_MASK] = seconds
        self.recent_n = n + 1
        if error_type is not None:
            self.errors[error_type] = self.errors.get(error_type, 0) + 1


@dataclass
class CallTotals:
    """The counts of one module path, summed over its cells (its actors, restarts included)."""

    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    recent: list[float] = field(default_factory=list)

    def cumulative_buckets(self) -> list[tuple[str, float]]:
        """The histogram as Prometheus wants it: (upper bound, calls at or under it)."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.buckets, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class CallStats:
    """The cells of one app's module actors, by module path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cells: dict[str, tuple[CallCell, ...]] = {}
        # Counts of actors that ended, per path (see retire).
        self._retired: dict[str, CallCell] = {}

    def cell(self, path: str) -> CallCell:
        """A new cell for a module actor at ``path`` (one per actor incarnation: the counts
        of the ones before a restart stay in theirs)."""
        cell = CallCell()
        with self._lock:
            self._cells[path] = (*self._cells.get(path, ()), cell)
        return cell

    def retire(self, path: str, cell: CallCell) -> None:
        """The actor of ``cell`` ended: fold its counts into the path's retired cell (only
        written here, under the lock), so an actor restarted many times leaves one cell."""
        with self._lock:
            mine = self._cells.get(path, ())
            if cell not in mine:
                return
            kept = self._retired.get(path)
            if kept is None:
                kept = self._retired[path] = CallCell()
            kept.calls += cell.calls
            for error_type, n in cell.errors.items():
                kept.errors[error_type] = kept.errors.get(error_type, 0) + n
            for i, n in enumerate(cell.buckets):
                kept.buckets[i] += n
            kept.latency_sum += cell.latency_sum
            for i in range(max(0, cell.recent_n - RECENT), cell.recent_n):
                kept.recent[kept.recent_n & _RECENT_MASK] = cell.recent[i & _RECENT_MASK]
                kept.recent_n += 1
            self._cells[path] = tuple(c for c in mine if c is not cell)

    def totals(self) -> dict[str, CallTotals]:
        """Each path's counts now. Read without stopping the writers: a call ending during
        the read may be in one figure and not yet in another, never lost."""
        out: dict[str, CallTotals] = {}
        with self._lock:  # (held while summing: retire writes the retired cells under it)
            for path in {*self._cells, *self._retired}:
                mine = self._cells.get(path, ())
                retired = self._retired.get(path)
                out[path] = _summed((*mine, retired) if retired is not None else mine)
        return out

    def calls_ended(self) -> int:
        """Calls ended on every path so far (cheap: to see whether anything changed)."""
        with self._lock:
            cells = [c for mine in self._cells.values() for c in mine]
            cells += self._retired.values()
            return sum(c.calls for c in cells)


def _summed(cells: tuple[CallCell, ...]) -> CallTotals:
    totals = CallTotals()
    for cell in cells:
        totals.calls += cell.calls
        for error_type, n in list(cell.errors.items()):
            totals.errors[error_type] = totals.errors.get(error_type, 0) + n
        for i, n in enumerate(list(cell.buckets)):
            totals.buckets[i] += n
        totals.latency_sum += cell.latency_sum
        totals.recent.extend(cell.recent[: min(cell.recent_n, RECENT)])
    return totals
