"""LM clients pointed at a :class:`SimLM`, with the settings a test wants.

A test's LM should reach the server on every call (no cache), retry a fault fast (a
backoff of milliseconds, not seconds; a ``Retry-After`` still rules) and give up on a hung
request in seconds, not a minute. ``lm_on(sim)`` is that LM; the pytest plugin's
``make_lm`` fixture and ``app`` fixture use it, and so does this project's own suite.

>>> from dspy_actors.testing import SimLM, lm_on
>>> with SimLM() as sim:
...     lm = lm_on(sim)
...     print(lm("Say hi"), lm.retry_policy.max_retries)
...     lm.close()
['This is a simulated answer.'] 3
"""

from __future__ import annotations

from typing import Any

from dspy_actors.lm import LM, RetryPolicy
from dspy_actors.testing.sim_lm import SimLM

__all__ = ["FAST_RETRIES", "lm_on"]

# A few retries, milliseconds apart: a test that injects faults still finishes quickly.
FAST_RETRIES = RetryPolicy(max_retries=3, base_delay=0.002, max_delay=0.02)
# A hang fault fails an attempt in seconds (the LM's own default is a minute).
TEST_TIMEOUT_SECONDS = 10.0


def lm_on(sim: SimLM, model: str = "openai/sim-model", **kw: Any) -> LM:
    """An LM on ``sim`` (its Anthropic endpoint for an ``anthropic/`` model, else the
    OpenAI one): uncached, ``FAST_RETRIES``, a 10 s timeout, key ``"test-key"``; any
    keyword overrides these. Close it (``lm.close()``) when done."""
    kw.setdefault("cache", False)
    kw.setdefault("retry_policy", FAST_RETRIES)
    kw.setdefault("timeout", TEST_TIMEOUT_SECONDS)
    kw.setdefault("api_key", "test-key")
    base = sim.anthropic_base if model.startswith("anthropic/") else sim.openai_base
    kw.setdefault("api_base", base)
    return LM(model, **kw)
