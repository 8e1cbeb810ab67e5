"""``Adapter``: turns (signature, demos, inputs) into chat messages and completions back
into typed output dicts. Subclasses choose how outputs are laid out (markers, JSON)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

from dspy_actors._callbacks import reporting_lm_call
from dspy_actors.adapters._type_hints import structure_note
from dspy_actors.adapters._values import Content, format_value
from dspy_actors.lm._steps import LMCall, Steps, run_steps
from dspy_actors.primitives.example import Example
from dspy_actors.signatures._type_names import annotation_name, is_optional
from dspy_actors.signatures.custom_types import ContentPart, CustomType, History
from dspy_actors.signatures.field import Field
from dspy_actors.signatures.signature import Signature

if TYPE_CHECKING:
    from dspy_actors.lm._types import LMResponse

__all__ = [
    "INCOMPLETE_DEMO_PREFIX",
    "NOT_SUPPLIED",
    "Adapter",
    "CompletionClient",
    "Message",
    "fallback_for_missing",
]

Message = dict[str, Any]

INCOMPLETE_DEMO_PREFIX = (
    "This is an example of the task, though some input or output fields are not supplied."
)
NOT_SUPPLIED = "Not supplied for this particular example."


class CompletionClient(Protocol):
    """What an adapter needs from an LM (``dspy_actors.lm.LM`` satisfies it)."""

    def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        response_format: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> LMResponse: ...


_NO_FALLBACK = object()


def fallback_for_missing(field: Field) -> Any:
    """The value of an output the LM left out: its default (or ``default_factory()``), else
    None when its type allows None; ``_NO_FALLBACK`` when it is required (as in DSPy)."""
    if field.has_default:
        return field.get_default()
    if is_optional(field.annotation):
        return None
    return _NO_FALLBACK


def is_missing_required(value: Any) -> bool:
    return value is _NO_FALLBACK


def field_marker(name: str) -> str:
    return f"[[ ## {name} ## ]]"


def is_history(field: Field) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, History)


@lru_cache(maxsize=4096)
def prompt_inputs(signature: type[Signature]) -> tuple[Field, ...]:
    """Input fields shown as fields (a History input is rendered as past turns instead).
    Cached: signature classes are immutable."""
    return tuple(f for f in signature.input_fields.values() if not is_history(f))


@lru_cache(maxsize=4096)
def history_fields(signature: type[Signature]) -> tuple[Field, ...]:
    return tuple(f for f in signature.input_fields.values() if is_history(f))


def join_content(segments: Sequence[Content], sep: str = "\n\n") -> Content:
    """Join text and content parts into one message content (text if it is all text)."""
    for segment in segments:  # a plain loop: this runs for every part of every prompt
        if not isinstance(segment, str):
            break
    else:
        return sep.join(segments)  # type: ignore[arg-type]  # (all str: checked above)
    parts: list[ContentPart] = []
    for i, seg in enumerate(segments):
        text_prefix = sep if i else ""
        if isinstance(seg, str):
            _append_text(parts, text_prefix + seg)
        else:
            if text_prefix:
                _append_text(parts, text_prefix)
            for part in seg:
                if part.get("type") == "text":
                    _append_text(parts, str(part.get("text", "")))
                else:
                    parts.append(part)
    return parts


def _append_text(parts: list[ContentPart], text: str) -> None:
    if parts and parts[-1].get("type") == "text":
        parts[-1] = {"type": "text", "text": str(parts[-1]["text"]) + text}
    else:
        parts.append({"type": "text", "text": text})


_TEXT_CACHE: dict[tuple[type[Adapter], type[Signature]], tuple[str, str]] = {}
_TEXT_CACHE_LOCK = threading.Lock()
_TEXT_CACHE_MAX = 4096


class Adapter:
    """Formats prompts and parses completions for a signature.

    ``adapter(lm, lm_kwargs, signature, demos, inputs)`` makes one LM call and returns
    one dict of typed output values per completion (``n`` > 1 gives several).
    """

    name = "Adapter"
    # Send a signature's ``list[Tool]`` input as the provider's tools and fill its
    # ``ToolCalls`` output from the response's tool calls (adapters/_native_tools.py).
    use_native_function_calling: bool = False

    def __call__(
        self,
        lm: CompletionClient,
        lm_kwargs: Mapping[str, Any],
        signature: type[Signature],
        demos: Sequence[Example | Mapping[str, Any]],
        inputs: Mapping[str, Any],
    ) -> list[dict[str, Any]]:
        return run_steps(self.steps(lm, lm_kwargs, signature, demos, inputs))

    def steps(
        self,
        lm: Any,
        lm_kwargs: Mapping[str, Any],
        signature: type[Signature],
        demos: Sequence[Example | Mapping[str, Any]],
        inputs: Mapping[str, Any],
    ) -> Steps[list[dict[str, Any]]]:
        """The same work as ``__call__``, as steps that ask for the LM call (see
        :mod:`dspy_actors.lm._steps`): the actor runtime drives these without blocking."""
        if self.use_native_function_calling:
            from dspy_actors.adapters._native_tools import plan_native_tools

            plan = plan_native_tools(signature, inputs, lm_kwargs)
            if plan is not None:
                messages = self.format(plan.signature, demos, plan.inputs)
                kwargs = {"response_format": self.response_format(lm, plan.signature)}
                response = yield LMCall(lm, messages, {**kwargs, **plan.lm_kwargs})
                return plan.outputs(response.outputs, response.tool_calls, self.parse)
        messages = self.format(signature, demos, inputs)
        kwargs = {"response_format": self.response_format(lm, signature), **dict(lm_kwargs)}
        reporting = reporting_lm_call(lm, messages, kwargs)  # None without callbacks
        if reporting is None:
            response = yield LMCall(lm, messages, kwargs)
        else:
            with reporting as report:
                response = yield LMCall(lm, messages, kwargs)
                report.outputs = list(response.outputs)
        return [self.parse(signature, output) for output in response.outputs]

    # -- to be provided by subclasses ---------------------------------------------------
    def response_format(self, lm: Any, signature: type[Signature]) -> dict[str, Any] | None:
        return None

    def output_structure(self, signature: type[Signature]) -> str:
        raise NotImplementedError

    def output_instruction(self, signature: type[Signature]) -> str:
        raise NotImplementedError

    def format_outputs(
        self, signature: type[Signature], values: Mapping[str, Any], *, missing: str | None
    ) -> str:
        raise NotImplementedError

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        raise NotImplementedError

    # -- messages -----------------------------------------------------------------------
    def format(
        self,
        signature: type[Signature],
        demos: Sequence[Example | Mapping[str, Any]],
        inputs: Mapping[str, Any],
    ) -> list[Message]:
        """The chat messages: system, demo pairs, history turns, then the new input."""
        system, instruction = self._fixed_texts(signature)
        messages: list[Message] = [{"role": "system", "content": system}]
        if demos:
            messages.extend(self.format_demos(signature, demos))
        if history_fields(signature):
            messages.extend(self.format_history(signature, inputs))
        final = self.format_inputs(signature, inputs)
        messages.append({"role": "user", "content": join_content([final, instruction])})
        return messages

    def _fixed_texts(self, signature: type[Signature]) -> tuple[str, str]:
        """The system message and the output instruction, which depend only on the adapter
        class and the (immutable) signature: computed once, then reused on every call."""
        key = (type(self), signature)
        texts = _TEXT_CACHE.get(key)
        if texts is None:
            texts = (self.system_message(signature), self.output_instruction(signature))
            with _TEXT_CACHE_LOCK:
                if len(_TEXT_CACHE) >= _TEXT_CACHE_MAX:
                    _TEXT_CACHE.clear()  # programs use few signatures; a bound, not an LRU
                _TEXT_CACHE[key] = texts
        return texts

    def system_message(self, signature: type[Signature]) -> str:
        inputs = prompt_inputs(signature)
        outputs = list(signature.output_fields.values())
        parts = [
            f"Your input fields are:\n{describe_fields(inputs)}" if inputs else "",
            f"Your output fields are:\n{describe_fields(outputs)}",
            "All interactions will be structured in the following way, with the appropriate "
            "values filled in.",
        ]
        head = "\n".join(p for p in parts if p)
        instructions = "\n".join(f"        {line}" for line in signature.instructions.splitlines())
        return (
            f"{head}\n\n{self.output_structure(signature)}\n"
            f"In adhering to this structure, your objective is:\n{instructions}"
        )

    def input_structure(self, signature: type[Signature]) -> str:
        return "\n\n".join(
            f"{field_marker(f.name)}\n{{{f.name}}}" for f in prompt_inputs(signature)
        )

    def output_placeholders(self, signature: type[Signature]) -> list[tuple[Field, str]]:
        """Each output field with its placeholder text (``{answer}  # note: ...``)."""
        out = []
        for f in signature.output_fields.values():
            note = structure_note(f.annotation)
            placeholder = f"{{{f.name}}}" + (
                f"        # note: the value you produce {note}" if note else ""
            )
            out.append((f, placeholder))
        return out

    def format_inputs(
        self, signature: type[Signature], values: Mapping[str, Any], prefix: str | None = None
    ) -> Content:
        """The input fields present in ``values``, each under its marker."""
        segments: list[Content] = [prefix] if prefix else []
        for f in prompt_inputs(signature):
            if f.name in values:
                value = values[f.name]
                if type(value) is str and f.format is None:  # most inputs: the same text
                    segments.append(f"{field_marker(f.name)}\n{value}")
                    continue
                value = _revive_custom(f, value)
                shown = f.format(value) if f.format is not None else format_value(value)
                segments.append(join_content([field_marker(f.name), shown], "\n"))
        return join_content(segments)

    def format_demos(
        self, signature: type[Signature], demos: Sequence[Example | Mapping[str, Any]]
    ) -> list[Message]:
        """Demos as user/assistant pairs: partial demos (some fields missing) first, marked
        as such; demos without any input or any output are skipped."""
        input_names = [f.name for f in prompt_inputs(signature)]
        output_names = list(signature.output_fields)
        complete: list[Message] = []
        partial: list[Message] = []
        for demo in demos:
            values = _demo_values(demo)
            has_in = [n for n in input_names if values.get(n) is not None]
            has_out = [n for n in output_names if values.get(n) is not None]
            if not has_in or not has_out:
                continue
            present = {k: v for k, v in values.items() if v is not None}
            is_complete = len(has_in) == len(input_names) and len(has_out) == len(output_names)
            target = complete if is_complete else partial
            target.append(
                {
                    "role": "user",
                    "content": self.format_inputs(
                        signature, present, None if is_complete else INCOMPLETE_DEMO_PREFIX
                    ),
                }
            )
            target.append(
                {
                    "role": "assistant",
                    "content": self.format_outputs(
                        signature, present, missing=None if is_complete else NOT_SUPPLIED
                    ),
                }
            )
        return partial + complete

    def format_history(
        self, signature: type[Signature], inputs: Mapping[str, Any]
    ) -> list[Message]:
        """Past turns of a History input as user/assistant messages."""
        messages: list[Message] = []
        for f in history_fields(signature):
            if inputs.get(f.name) is None:
                continue
            history = inputs[f.name]
            turns = (
                history.messages
                if isinstance(history, History)
                else History.model_validate(history).messages
            )
            for turn in turns:
                messages.append({"role": "user", "content": self.format_inputs(signature, turn)})
                outputs = {k: v for k, v in turn.items() if k in signature.output_fields}
                messages.append(
                    {
                        "role": "assistant",
                        "content": self.format_outputs(signature, outputs, missing=None),
                    }
                )
        return messages


def describe_fields(fields: Sequence[Field]) -> str:
    lines = []
    for i, f in enumerate(fields, 1):
        line = f"{i}. `{f.name}` ({annotation_name(f.annotation)})"
        if f.desc:
            line += f": {f.desc}"
        described = getattr(f.annotation, "description", None)
        if isinstance(f.annotation, type) and issubclass(f.annotation, CustomType) and described:
            line += f"\n{described()}"  # e.g. Code: how to write it
        if f.constraints:
            line += f"\nConstraints: {f.constraints_text()}"
        lines.append(line)
    return "\n".join(lines)


def _demo_values(demo: Example | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(demo, Example):
        return demo.to_dict()
    return dict(demo)


def _revive_custom(field: Field, value: Any) -> Any:
    """A custom-type value that went through JSON (a loaded demo's ``{"url": ...}``) back
    as its type, so it is sent as an image/audio part again rather than as JSON text."""
    if not isinstance(value, dict):
        return value
    ann = field.annotation
    is_custom_model = (
        isinstance(ann, type) and issubclass(ann, CustomType) and issubclass(ann, BaseModel)
    )
    if is_custom_model:
        return ann.model_validate(value)
    return value
