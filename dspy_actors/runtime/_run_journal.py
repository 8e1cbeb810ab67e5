"""The LM journal of a run: every finished LM result is saved with the run, so a run
resumed after a kill (of its driver, or of the whole process) redoes at most the LM calls
that were in flight at the kill, and gets the same answers for the others.

Step checkpoints (runs.py) save whole steps; a step can be long (BootstrapFewShot is one
step; a candidate's evaluation is hundreds of calls). The journal fills the gap: the run's
LM is wrapped in a :class:`JournaledLM`, which answers a request from the journal when the
same request was answered before in this run, and records each new answer before handing
it on. A request is identified by its content (model, messages, parameters) and by how many
identical requests came before it in this attempt (the n-th identical request gets the n-th
answer), so a step that asks the same thing twice gets both answers back in order.

A replayed answer costs no tokens (usage zero, ``cache_hit`` True): no request was made.
Only successes are journaled; a failed call is made again.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from typing import Any

from dspy_actors.lm._types import LMResponse
from dspy_actors.lm._usage import Usage
from dspy_actors.lm.cache import cache_key
from dspy_actors.runtime._run_store import RunStore

__all__ = ["JournaledLM", "LMJournal", "request_key"]

_REPLAYED = Usage(prompt_tokens=0, completion_tokens=0, calls=0)


def request_key(model: str, messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> str:
    """A stable id of one LM request's content."""
    request = {"model": model, "messages": messages, "kwargs": kwargs}
    try:
        return cache_key(request)
    except (TypeError, ValueError):  # a value with no JSON form: counted by its repr
        text = json.dumps(request, sort_keys=True, default=repr, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class LMJournal:
    """The journal of one run in its :class:`RunStore`; counts identical requests."""

    def __init__(self, store: RunStore, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self._lock = threading.Lock()
        self._seen: Counter[str] = Counter()
        self.replayed = 0
        self.recorded = 0

    def next_occurrence(self, key: str) -> int:
        with self._lock:
            occurrence = self._seen[key]
            self._seen[key] += 1
            return occurrence

    def lookup(self, key: str, occurrence: int) -> LMResponse | None:
        data = self.store.journal_load(self.run_id, key, occurrence)
        if data is None:
            return None
        try:
            response = LMResponse(
                outputs=[str(o) for o in data["outputs"]],
                usage=_REPLAYED,
                model=str(data["model"]),
                finish_reasons=list(data["finish_reasons"]),
                cache_hit=True,
                latency_s=0.0,
            )
        except (KeyError, TypeError):  # a damaged entry: make the call again
            return None
        with self._lock:
            self.replayed += 1
        return response

    def record(self, key: str, occurrence: int, response: LMResponse) -> None:
        data = {
            "outputs": list(response.outputs),
            "model": response.model,
            "finish_reasons": list(response.finish_reasons),
        }
        self.store.journal_save(self.run_id, key, occurrence, data)
        with self._lock:
            self.recorded += 1


class JournaledLM:
    """Stands in for the run's LM: answers from the journal what it can, journals the
    rest. Every other attribute is the wrapped LM's."""

    def __init__(self, lm: Any, journal: LMJournal) -> None:
        self._lm = lm
        self._journal = journal

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lm, name)

    def complete(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        key = request_key(str(getattr(self._lm, "model", "")), messages, kwargs)
        occurrence = self._journal.next_occurrence(key)
        replayed = self._journal.lookup(key, occurrence)
        if replayed is not None:
            return replayed
        response = self._lm.complete(messages, **kwargs)
        if isinstance(response, LMResponse):
            self._journal.record(key, occurrence, response)
        return response

    def __repr__(self) -> str:
        return f"JournaledLM({self._lm!r})"
