"""Fault-injection harness: a simulated LM server (SimLM) and the faults it injects."""

from dspy_actors.testing.faults import Fault, FaultPlan, FaultRule
from dspy_actors.testing.sim_lm import SimLM, SimReply, SimRequest, SimStats

__all__ = ["Fault", "FaultPlan", "FaultRule", "SimLM", "SimReply", "SimRequest", "SimStats"]
