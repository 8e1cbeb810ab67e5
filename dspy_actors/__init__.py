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

from dspy_actors.adapters import Adapter, AdapterParseError, ChatAdapter, JSONAdapter
from dspy_actors.embedder import Embedder
from dspy_actors.evaluate import Evaluate, EvaluationError, EvaluationResult, answer_exact_match
from dspy_actors.lm import LM, LMError, LMResponse, RetryPolicy, Usage
from dspy_actors.lm.breaker import CircuitOpen
from dspy_actors.modules import ChainOfThought, NoLMConfiguredError, Predict
from dspy_actors.optimizers import (
    COPRO,
    BootstrapFewShot,
    BootstrapFewShotWithRandomSearch,
    Ensemble,
    KNNFewShot,
    LabeledFewShot,
    MIPROv2,
)
from dspy_actors.optimizers.gepa import GEPA
from dspy_actors.optimizers.simba import SIMBA
from dspy_actors.primitives import Example, Module, Prediction, StateError
from dspy_actors.primitives.program_file import load, register_module, register_type
from dspy_actors.runtime.app import App, start
from dspy_actors.runtime.errors import (
    DeadLettered,
    DeadlineExceeded,
    ModuleCrashed,
    ModuleUnavailable,
    Overloaded,
)
from dspy_actors.runtime.events import Callback
from dspy_actors.runtime.handle import ProgramHandle
from dspy_actors.runtime.runs import RunCancelled, RunFailed, RunHandle
from dspy_actors.runtime.stream import Stream
from dspy_actors.settings import configure, context
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
    "Audio",
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
    "NoLMConfiguredError",
    "OutputField",
    "Overloaded",
    "Predict",
    "Prediction",
    "ProgramHandle",
    "Reasoning",
    "RetryPolicy",
    "RunCancelled",
    "RunFailed",
    "RunHandle",
    "Signature",
    "SignatureSyntaxError",
    "StateError",
    "Stream",
    "Tool",
    "Usage",
    "answer_exact_match",
    "configure",
    "context",
    "load",
    "register_module",
    "register_type",
    "start",
]
