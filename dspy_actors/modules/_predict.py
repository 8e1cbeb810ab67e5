"""``Predict``: one LM call for a signature, with demos and sampling config."""

from __future__ import annotations

from typing import Any, ClassVar

from dspy_actors import _settings as settings
from dspy_actors._callbacks import active_callbacks, reporting_module_call
from dspy_actors.adapters.base import Adapter
from dspy_actors.adapters.chat_adapter import ChatAdapter
from dspy_actors.lm._steps import Steps, run_steps
from dspy_actors.modules._async_steps import arun_steps
from dspy_actors.modules._input_checks import checked_inputs
from dspy_actors.primitives._call_history import with_history
from dspy_actors.primitives._jsonable import to_jsonable
from dspy_actors.primitives._parameter import StateError
from dspy_actors.primitives._predictor import Predictor
from dspy_actors.primitives.example import Example
from dspy_actors.primitives.module import Module, reject_lm_string
from dspy_actors.primitives.prediction import Prediction
from dspy_actors.signatures.signature import Signature, ensure_signature

__all__ = ["NoLMConfiguredError", "Predict"]

_DEFAULT_ADAPTER = ChatAdapter()
# Keyword arguments of a call that configure it rather than being signature inputs.
_CALL_OPTIONS = ("lm", "config", "demos", "signature")


class NoLMConfiguredError(RuntimeError):
    """A predictor was called with no LM: none passed, set on it, or configured."""


class Predict(Module, Predictor):
    """Call an LM for ``signature``: ``Predict("question -> answer")(question="...")``.

    ``config`` holds sampling parameters for every call (``temperature``, ``n``, ...). A call
    may pass ``lm=``, ``config={...}`` (merged over the stored config), ``demos=`` and
    ``signature=``. The LM comes from the call, else ``self.lm``, else the settings
    (``configure(lm=...)`` / ``context(lm=...)``); the adapter from the settings, else
    :class:`ChatAdapter`.
    """

    _share_on_copy: ClassVar[frozenset[str]] = frozenset({"lm"})

    def __init__(self, signature: str | type[Signature], **config: Any) -> None:
        self.signature: type[Signature] = ensure_signature(signature)
        self.config: dict[str, Any] = dict(config)
        self.demos: list[Example] = []
        self.lm: Any = None

    def __repr__(self) -> str:
        return f"Predict({self.signature!r})"

    def get_config(self) -> dict[str, Any]:
        return dict(self.config)

    def update_config(self, **config: Any) -> None:
        self.config.update(config)

    def forward(self, **kwargs: Any) -> Prediction:
        return run_steps(self.steps(**kwargs))

    async def aforward(self, **kwargs: Any) -> Prediction:
        """``forward`` for asyncio (``await predict.acall(...)``): the same steps, each LM
        call awaited (see :mod:`dspy_actors.modules._async_steps`)."""
        return await arun_steps(self.steps(**kwargs))

    def steps(self, **kwargs: Any) -> Steps[Prediction]:
        """``forward`` as steps that ask for each LM call instead of making it (the actor
        runtime sends those calls to its LM pool as messages); see
        :mod:`dspy_actors.lm._steps`."""
        # The call's own keyword arguments, for callbacks only (the pops below change them).
        reporting = active_callbacks(self)
        call_kwargs = dict(kwargs) if reporting else kwargs
        lm = kwargs.pop("lm", None) or self.lm or settings.get("lm")
        reject_lm_string(lm)
        config = {**self.config, **(kwargs.pop("config", None) or {})}
        demos = kwargs.pop("demos", None)
        demos = self.demos if demos is None else demos
        signature = ensure_signature(kwargs.pop("signature", None) or self.signature)
        if lm is None:
            raise NoLMConfiguredError(
                f"no LM for {type(self).__name__}({signature.signature}): call "
                "dspy_actors.configure(lm=dspy_actors.LM('openai/<model>', ...)), use "
                "`with dspy_actors.context(lm=...)`, or pass lm=... to the call"
            )
        warn_types = settings.get("warn_on_type_mismatch")
        inputs = checked_inputs(signature, kwargs, warn_on_type_mismatch=warn_types is not False)
        adapter: Adapter = settings.get("adapter") or _DEFAULT_ADAPTER
        calls = with_history(adapter.steps(lm, config, signature, demos, inputs), self.history)
        if not reporting:  # the common case: nothing to tell
            outputs = yield from calls
            return Prediction.from_completions(outputs)
        # Served, the actor runs these steps without __call__: callbacks are told here.
        with reporting_module_call(self, (), call_kwargs, in_steps=True) as report:
            outputs = yield from calls
            report.outputs = Prediction.from_completions(outputs)
        return report.outputs  # type: ignore[no-any-return]

    # -- Parameter ----------------------------------------------------------------------
    def reset(self) -> None:
        """Forget demos and the LM set on this predictor (as DSPy's ``reset``)."""
        self.demos = []
        self.lm = None

    def dump_state(self) -> dict[str, Any]:
        model = getattr(self.lm, "model", None) if self.lm is not None else None
        return {
            "demos": [to_jsonable(d) for d in self.demos],
            "signature": {
                "instructions": self.signature.instructions,
                "fields": [
                    {"name": f.name, "prefix": f.prefix, "desc": f.desc}
                    for f in self.signature.fields.values()
                ],
            },
            # Only the model's name, for the record: never the client or its API key.
            "lm": {"model": model} if isinstance(model, str) else None,
        }

    def load_state(self, state: dict[str, Any]) -> Predict:
        """Restore demos, instructions and field texts. The LM is not restored (state never
        holds credentials); set it with ``lm=``/``configure``."""
        if not isinstance(state, dict) or "demos" not in state or "signature" not in state:
            from dspy_actors.primitives._state_errors import shape_hint  # error path only

            hint = shape_hint(state, "this Predict", ["self"])
            raise StateError(
                "a predictor state needs 'demos' and 'signature'" + (f"; {hint}" if hint else "")
            )
        demos = state["demos"]
        if not isinstance(demos, list) or not all(isinstance(d, dict) for d in demos):
            raise StateError("'demos' must be a list of objects")
        sig_state = state["signature"]
        fields = sig_state.get("fields", []) if isinstance(sig_state, dict) else None
        if not isinstance(fields, list):
            raise StateError("'signature.fields' must be a list")
        names = [f.get("name") for f in fields if isinstance(f, dict)]
        expected = list(self.signature.fields)
        if names != expected:
            raise StateError(f"signature fields {names} do not match this predictor's {expected}")
        signature = self.signature
        for f in fields:
            signature = signature.with_updated_fields(
                f["name"], prefix=str(f.get("prefix", "")), desc=str(f.get("desc", ""))
            )
        instructions = sig_state.get("instructions")
        if isinstance(instructions, str):
            signature = signature.with_instructions(instructions)
        self.signature = signature
        self.demos = [Example(d) for d in demos]
        return self
