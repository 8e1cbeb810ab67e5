"""dspy_actors.runtime: the actor layer (application tree, module actors, handles, context,
event bus, parameter store, dead letters, streams)."""

from dspy_actors.runtime._dead_letters import DeadLetter, DeadLetterStore
from dspy_actors.runtime._events import (
    BreakerTransition,
    Callback,
    DeadLetterEvent,
    Event,
    EventBus,
    LMEnd,
    LMStart,
    ModuleEnd,
    ModuleError,
    ModuleStart,
    RunProgress,
    RuntimeRestart,
    Subscription,
    callback_subscriber,
    structlog_subscriber,
)
from dspy_actors.runtime._parameter_store import ParameterStore, VersionInfo
from dspy_actors.runtime._sqlite import StoreError, StoreHealth

__all__ = [
    "BreakerTransition",
    "Callback",
    "DeadLetter",
    "DeadLetterEvent",
    "DeadLetterStore",
    "Event",
    "EventBus",
    "LMEnd",
    "LMStart",
    "ModuleEnd",
    "ModuleError",
    "ModuleStart",
    "ParameterStore",
    "RunProgress",
    "RuntimeRestart",
    "StoreError",
    "StoreHealth",
    "Subscription",
    "VersionInfo",
    "callback_subscriber",
    "structlog_subscriber",
]
