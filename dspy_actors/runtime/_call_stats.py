"""Module calls and LM requests counted where they are answered, read when someone looks.

A module actor counts each call it ends (success or error) in its own :class:`CallCell`:
a few plain numbers, written only by the actor's turn (one thread at a time), so no lock
and no event per call. Metrics (``/metrics``) and the console read the cells when scraped
or when they push, summed per module path by :class:`CallStats`.

The LM pool counts each request where it ends in the app's :class:`LMCounts`
(per deployment: requests by model and outcome, errors, cache hits, latency buckets,
tokens), in whichever thread ends it, under one lock held for a few dict updates: a
fraction of what the two events per request it replaces cost metrics and the console.

Events stay for what is rare (restarts, breaker transitions, dead letters) and for
subscribers that asked for every call's (``app.subscribe("module.*", ...)``, ``"lm.*"``)
or for the calls tracing samples.

    stats = CallStats()
    cell = stats.cell("qa")                 # a module actor's, at its start
    cell.ended(0.002)                       # one call answered in 2 ms
    cell.ended(0.5, "LMError")              # one failed
    stats.totals()["qa"].calls              # 2
    lm = LMCounts()
    lm.ended("openai:...:gpt", "openai/gpt", 0.8, prompt_tokens=12, completion_tokens=3)
    lm.totals()["openai:...:gpt"].requests  # 1
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

__all__ = [
    "LATENCY_BUCKETS",
    "CallCell",
    "CallStats",
    "CallTotals",
    "LMCounts",
    "LMTotals",
    "cumulative",
]

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
        return cumulative(self.buckets)


def cumulative(buckets: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (``LATENCY_BUCKETS``, then +Inf) as Prometheus wants a histogram:
    (upper bound, observations at or under it)."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=True):
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


@dataclass
class LMTotals:
    """The LM requests of one deployment so far (a copy: :meth:`LMCounts.totals`)."""

    # Requests ended (answered, a cache hit included, or failed).
    requests: int = 0
    # Ended requests by (model, outcome): "ok", "cache_hit" or the error type.
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    # Latency of the requests that were sent (cache hits excluded).
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def copy(self) -> LMTotals:
        return LMTotals(
            self.requests, dict(self.outcomes), dict(self.errors),
            self.cache_hits, list(self.buckets), self.latency_sum, self.prompt_tokens,
            self.completion_tokens,
        )  # fmt: skip


class LMCounts:
    """An app's LM requests, per deployment key, counted by the LM pool where each ends
    (in whichever thread ends it: one lock, held for a few dict updates). Requests in
    flight are the dispatcher's to say (``Dispatcher.stats``), exactly."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, LMTotals] = {}
        # Requests ended so far, every deployment: a cheap "did anything change".
        self.ended_so_far = 0

    def ended(
        self,
        deployment: str,
        model: str,
        latency_s: float,
        *,
        error_type: str | None = None,
        cache_hit: bool = False,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
    ) -> None:
        """A request of ``deployment`` ended: answered (a cache hit, or sent and answered
        with the tokens given) or failed with ``error_type``."""
        outcome = error_type or ("cache_hit" if cache_hit else "ok")
        with self._lock:
            totals = self._by_key.get(deployment)
            if totals is None:
                totals = self._by_key[deployment] = LMTotals()
            totals.requests += 1
            self.ended_so_far += 1
            key = (model, outcome)
            totals.outcomes[key] = totals.outcomes.get(key, 0) + 1
            if error_type is not None:
                totals.errors[error_type] = totals.errors.get(error_type, 0) + 1
            if cache_hit:
                totals.cache_hits += 1
                return
            totals.buckets[bisect.bisect_left(LATENCY_BUCKETS, latency_s)] += 1
            totals.latency_sum += latency_s
            if prompt_tokens:
                totals.prompt_tokens += prompt_tokens
            if completion_tokens:
                totals.completion_tokens += completion_tokens

    def totals(self) -> dict[str, LMTotals]:
        """Each deployment's counts now (copies)."""
        with self._lock:
            return {key: totals.copy() for key, totals in self._by_key.items()}
