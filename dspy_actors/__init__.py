"""dspy_actors: the DSPy programming model on an OTP-style supervised actor runtime.

In-process, as a DSPy user knows it::

    import dspy_actors as dsa
    dsa.configure(lm=dsa.LM("openai/gpt-4o-mini", api_base="http://127.0.0.1:8000/v1"))
    qa = dsa.ChainOfThought("question -> answer")
    print(qa(question="What is 2 + 2?").answer)

Served by the supervised runtime, from many threads, across crashes::

    with dsa.start(lm=dsa.LM(...)) as app:
        qa = app.serve("qa", dsa.ChainOfThought("question -> answer"))
        print(qa.call(question="What is 2 + 2?").answer)
        print(app.tree().render())
"""

# First: httpx (imported by the LM layer) without its command-line client (click...).
from dspy_actors import _deferred_imports  # noqa: F401
from dspy_actors._asyncify import asyncify
from dspy_actors._callbacks import BaseCallback
from dspy_actors._embedder import Embedder, EmbeddingError
from dspy_actors._settings import configure, context
from dspy_actors.adapters import (
    Adapter,
    AdapterParseError,
    ChatAdapter,
    JSONAdapter,
    TwoStepAdapter,
    XMLAdapter,
)
from dspy_actors.evaluate import Evaluate, EvaluationError, EvaluationResult, answer_exact_match
from dspy_actors.lm import LM, LMError, LMResponse, RetryPolicy, Usage
from dspy_actors.lm._breaker import CircuitOpen
from dspy_actors.lm._history import inspect_history
from dspy_actors.lm._track_usage import track_usage
from dspy_actors.lm.errors import (
    AuthenticationError,
    BadRequest,
    LMConnectionError,
    LMTimeout,
    MalformedResponse,
    RateLimited,
    ServerError,
)
from dspy_actors.modules import (
    BestOfN,
    ChainOfThought,
    MultiChainComparison,
    NoLMConfiguredError,
    Parallel,
    ParallelError,
    Predict,
    Refine,
)
from dspy_actors.modules._fan_out import FanOutTimeout
from dspy_actors.modules._react import TrajectoryTooLong
from dspy_actors.modules.tool_runner import ToolTimeout
from dspy_actors.optimizers import (
    COPRO,
    BootstrapFewShot,
    BootstrapFewShotWithRandomSearch,
    Ensemble,
    KNNFewShot,
    LabeledFewShot,
    MIPROv2,
    majority,
)
from dspy_actors.optimizers._bootstrap import BootstrapError
from dspy_actors.optimizers._gepa import GEPA
from dspy_actors.optimizers._simba import SIMBA
from dspy_actors.primitives import Example, Module, Prediction, StateError
from dspy_actors.primitives._program_file import load, register_module, register_type
from dspy_actors.runtime._errors import (
    AppStopped,
    DeadLettered,
    DeadlineExceeded,
    ModuleCrashed,
    ModuleUnavailable,
    Overloaded,
    RuntimeCallError,
    UnencodableInput,
)
from dspy_actors.runtime._events import Callback
from dspy_actors.runtime._lm_pool import LMOverloaded, LMWorkerCrashed
from dspy_actors.runtime._lm_process import LMProcessExited
from dspy_actors.runtime._sqlite import StoreError
from dspy_actors.runtime._stream import Stream
from dspy_actors.runtime.app import App, start
from dspy_actors.runtime.handle import ProgramHandle
from dspy_actors.runtime.runs import RunCancelled, RunFailed, RunHandle
from dspy_actors.signatures import (
    Audio,
    Citations,
    Code,
    Document,
    History,
    Image,
    InputField,
    OutputField,
    Reasoning,
    Signature,
    SignatureSyntaxError,
    Tool,
)

__all__ = [
    "COPRO",
    "GEPA",
    "LM",
    "SIMBA",
    "Adapter",
    "AdapterParseError",
    "App",
    "AppStopped",
    "Audio",
    "BaseCallback",
    "BestOfN",
    "BootstrapFewShot",
    "BootstrapFewShotWithRandomSearch",
    "Callback",
    "ChainOfThought",
    "ChatAdapter",
    "CircuitOpen",
    "Citations",
    "Code",
    "DeadLettered",
    "DeadlineExceeded",
    "Document",
    "Embedder",
    "Ensemble",
    "Evaluate",
    "EvaluationError",
    "EvaluationResult",
    "Example",
    "History",
    "Image",
    "InputField",
    "JSONAdapter",
    "KNNFewShot",
    "LMError",
    "LMResponse",
    "LabeledFewShot",
    "MIPROv2",
    "Module",
    "ModuleCrashed",
    "ModuleUnavailable",
    "MultiChainComparison",
    "NoLMConfiguredError",
    "OutputField",
    "Overloaded",
    "Parallel",
    "ParallelError",
    "Predict",
    "Prediction",
    "ProgramHandle",
    "Reasoning",
    "Refine",
    "RetryPolicy",
    "RunCancelled",
    "RunFailed",
    "RunHandle",
    "Signature",
    "SignatureSyntaxError",
    "StateError",
    "Stream",
    "Tool",
    "TwoStepAdapter",
    "Usage",
    "XMLAdapter",
    "answer_exact_match",
    "asyncify",
    "configure",
    "context",
    "inspect_history",
    "load",
    "majority",
    "register_module",
    "register_type",
    "start",
    "track_usage",
]

# Agents and tools (issue 13).
from dspy_actors.modules._react import ReAct
from dspy_actors.modules.tool_runner import ToolRunner
from dspy_actors.signatures.custom_types._tool import ToolArgumentError, ToolCall, ToolCalls

__all__ += ["ReAct", "ToolArgumentError", "ToolCall", "ToolCalls", "ToolRunner"]

__all__ += [
    "AuthenticationError",
    "BadRequest",
    "BootstrapError",
    "EmbeddingError",
    "FanOutTimeout",
    "LMConnectionError",
    "LMOverloaded",
    "LMProcessExited",
    "LMTimeout",
    "LMWorkerCrashed",
    "MalformedResponse",
    "RateLimited",
    "RuntimeCallError",
    "ServerError",
    "StoreError",
    "ToolTimeout",
    "TrajectoryTooLong",
    "UnencodableInput",
]

# Streaming answers (issue 15): dsa.streamify, dsa.streaming.StreamListener, as in DSPy.
from dspy_actors import streaming  # noqa: E402
from dspy_actors.streaming import StatusMessage, StreamListener, StreamResponse, streamify  # noqa: E402

__all__ += ["StatusMessage", "StreamListener", "StreamResponse", "streamify", "streaming"]


from typing import Any as _Any  # noqa: E402


def _open_console(app: App, port: int, **options: _Any) -> _Any:
    # Imported on first use: the console pulls in Starlette and uvicorn.
    from dspy_actors.console import start_console

    return start_console(app, port, **options)


# App.console opens the console through this: the runtime never imports the views above it.
from dspy_actors.runtime.app import set_console_opener as _set_console_opener  # noqa: E402

_set_console_opener(_open_console)

# A custom LM, as DSPy users write one: subclass BaseLM, implement forward (docs/providers.md).
from dspy_actors.lm import BaseLM, LMForwardError  # noqa: E402

__all__ += ["BaseLM", "LMForwardError"]
