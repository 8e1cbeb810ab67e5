"""Fault-injection harness: a simulated LM server (SimLM), the faults it injects and the
plans that schedule them, and responders that script its answers."""

from dspy_actors.testing.faults import Fault, FaultPlan, FaultRule
from dspy_actors.testing.sim_lm import SimLM, SimReply, SimRequest, SimStats
from dspy_actors.testing.sim_responder import default_responder, scripted

__all__ = [
    "Fault",
    "FaultPlan",
    "FaultRule",
    "SimLM",
    "SimReply",
    "SimRequest",
    "SimStats",
    "default_responder",
    "scripted",
]
