"""Fault-injection harness: a simulated LM server (SimLM), the faults it injects and the
plans that schedule them, responders that script its answers, a chaos monkey that kills
actors of a running app, and invariants that prove nothing was lost.

The pytest plugin (``dspy_actors.testing.pytest_plugin``, enabled by installing the
package) gives tests the ``sim_lm``, ``make_lm``, ``app`` and ``chaos`` fixtures;
``lm_on(sim)`` is the LM they use (uncached, fast retries).
"""

from dspy_actors.testing._chaos import ChaosMonkey, ChaosRun, CrashRule, Kill
from dspy_actors.testing._faults import Fault, FaultPlan, FaultRule
from dspy_actors.testing._held_responder import HeldResponder, slow_responder
from dspy_actors.testing._invariants import (
    CLEAR_ERRORS,
    CallLedger,
    CallOutcome,
    assert_all_accounted,
    assert_no_leaked_threads,
    assert_tree_healthy,
    thread_snapshot,
)
from dspy_actors.testing._polling import wait_until
from dspy_actors.testing._sim_clients import FAST_RETRIES, lm_on
from dspy_actors.testing.sim_lm import SimLM, SimReply, SimRequest, SimStats
from dspy_actors.testing.sim_responder import default_responder, scripted

__all__ = [
    "CLEAR_ERRORS",
    "FAST_RETRIES",
    "CallLedger",
    "CallOutcome",
    "ChaosMonkey",
    "ChaosRun",
    "CrashRule",
    "Fault",
    "FaultPlan",
    "FaultRule",
    "HeldResponder",
    "Kill",
    "SimLM",
    "SimReply",
    "SimRequest",
    "SimStats",
    "assert_all_accounted",
    "assert_no_leaked_threads",
    "assert_tree_healthy",
    "default_responder",
    "lm_on",
    "scripted",
    "slow_responder",
    "thread_snapshot",
    "wait_until",
]
