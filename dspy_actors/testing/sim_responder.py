"""The simulated LM's default answers: well-formed completions for whatever the adapters ask.

ChatAdapter's final user message ends with "Respond with the corresponding output fields,
starting with the field `[[ ## reasoning ## ]]`, then `[[ ## answer ## ]]` (must be formatted
as a valid Python int), and then ending with the marker for `[[ ## completed ## ]]`." The
default responder reads that sentence and answers every field with a value of its hinted
type. With a ``response_format`` (JSONAdapter) it answers a JSON object instead: an instance
of the given JSON schema, or of the fields named in the final user message.

A simple arithmetic question ("What is 2 + 2?") gets its true answer, so examples print
something sensible.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dspy_actors.testing.sim_lm import SimRequest

_MARKER = re.compile(r"`?\[\[ ## (\w+) ## \]\]`?")
_JSON_FIELD = re.compile(r"`(\w+)`")
_ARITH = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*/x])\s*(-?\d+(?:\.\d+)?)")
# str fields that get the true answer to an arithmetic question.
_ANSWER_FIELDS = frozenset({"answer", "result", "value", "output"})
_OPS: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "x": operator.mul,
    "/": operator.truediv,
}


def arithmetic_answer(text: str) -> float | None:
    """The value of the first ``a op b`` expression in ``text``, if any."""
    m = _ARITH.search(text)
    if not m:
        return None
    a, op, b = float(m.group(1)), m.group(2), float(m.group(3))
    if op == "/" and b == 0:
        return None
    return _OPS[op](a, b)


def _paren_after(text: str, pos: int) -> tuple[str | None, int]:
    """The parenthesised hint starting at ``pos`` (after spaces), with nesting, if any."""
    i = pos
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "(":
        return None, pos
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "(":
            depth += 1
        elif text[j] == ")":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j], j + 1
    return None, pos


def requested_fields(text: str) -> list[tuple[str, str | None]]:
    """Output fields (name, type hint) named in a "Respond with ..." instruction."""
    idx = text.rfind("Respond with")
    if idx < 0:
        return []
    sentence = text[idx:]
    pattern = _MARKER if "[[ ##" in sentence else _JSON_FIELD
    fields: list[tuple[str, str | None]] = []
    for m in pattern.finditer(sentence):
        name = m.group(1)
        if name == "completed":
            continue
        hint, _ = _paren_after(sentence, m.end())
        fields.append((name, hint))
    return fields


def _literal_options(hint: str) -> list[Any]:
    m = re.search(r"Literal\[(.*)\]", hint, re.S)
    if m:
        try:
            value = ast.literal_eval(f"({m.group(1)},)")
            return list(value)
        except (ValueError, SyntaxError):
            return []
    m = re.search(r"one of:\s*(.*)", hint, re.S)
    if m:
        return [o.strip() for o in m.group(1).split(";") if o.strip()]
    return []


def _number(kind: str, arith: float | None) -> int | float:
    if kind == "int":
        return int(arith) if arith is not None else 42
    return float(arith) if arith is not None else 0.5


def typed_value(name: str, hint: str | None, arith: float | None) -> Any:
    """A Python/JSON value of the type described by an adapter's hint for field ``name``."""
    h = (hint or "").strip()
    if "JSON schema" in h or "json schema" in h:
        brace = h.find("{")
        if brace >= 0:
            try:
                return schema_instance(json.loads(h[brace:]), name, arith)
            except json.JSONDecodeError:
                pass
    options = _literal_options(h)
    if options:
        return options[0]
    base = re.sub(r"^.*?Python\s+", "", h).strip()
    base = re.sub(r"^Optional\[(.*)\]$", r"\1", base)
    base = re.sub(r"\s*\|\s*None$", "", base)
    if base.startswith(("list[", "List[", "tuple[", "set[")) or base == "list":
        inner = base[base.find("[") + 1 : -1] if "[" in base else "str"
        return [typed_value(name, f"Python {inner}", arith)]
    if base.startswith(("dict[", "Dict[")) or base == "dict":
        return {}
    if base == "int":
        return _number("int", arith)
    if base == "float":
        return _number("float", arith)
    if base == "bool":
        return True
    if name == "reasoning":
        return "Let me think step by step."
    if arith is not None and name in _ANSWER_FIELDS:
        return _fmt_number(arith)
    return f"simulated {name}"


def _fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def schema_instance(
    schema: dict[str, Any],
    name: str = "value",
    arith: float | None = None,
    defs: dict[str, Any] | None = None,
) -> Any:
    """A value conforming to (the common subset of) a JSON schema."""
    defs = (
        defs if defs is not None else dict(schema.get("$defs") or schema.get("definitions") or {})
    )
    if "$ref" in schema:
        target = defs.get(str(schema["$ref"]).rsplit("/", 1)[-1], {})
        return schema_instance(target, name, arith, defs)
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            choices = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return schema_instance(choices[0], name, arith, defs)
    stype = schema.get("type")
    if isinstance(stype, list):
        stype = next((t for t in stype if t != "null"), "null")
    if stype == "object" or (stype is None and "properties" in schema):
        props: dict[str, Any] = schema.get("properties") or {}
        return {k: schema_instance(v, k, arith, defs) for k, v in props.items()}
    if stype == "array":
        return [schema_instance(schema.get("items") or {"type": "string"}, name, arith, defs)]
    if stype == "integer":
        return _number("int", arith)
    if stype == "number":
        return _number("float", arith)
    if stype == "boolean":
        return True
    if stype == "null":
        return None
    return typed_value(name, None, arith)


def _as_chat_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    return json.dumps(value)


def default_responder(request: SimRequest) -> str:
    """Answer in ChatAdapter's marker format, or a JSON object when a response format or
    a JSON instruction was given."""
    text = request.last_user_text
    arith = arithmetic_answer(text)
    fmt = request.body.get("response_format")
    fields = requested_fields(text)
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        return json.dumps(schema_instance(schema, arith=arith))
    wants_json = isinstance(fmt, dict) and fmt.get("type") == "json_object"
    if wants_json or (fields and "[[ ##" not in text[text.rfind("Respond with") :]):
        names = fields or [("answer", None)]
        return json.dumps({n: typed_value(n, h, arith) for n, h in names})
    if not fields:
        return _fmt_number(arith) if arith is not None else "This is a simulated answer."
    parts = [f"[[ ## {n} ## ]]\n{_as_chat_text(typed_value(n, h, arith))}" for n, h in fields]
    parts.append("[[ ## completed ## ]]")
    return "\n\n".join(parts)


Reply = Any  # str | SimReply | Fault, or a function of the SimRequest returning one


def scripted(
    rules: Sequence[tuple[str | re.Pattern[str], Reply]],
    default: Callable[[SimRequest], Any] | None = None,
) -> Callable[[SimRequest], Any]:
    """A responder answering by matching the prompt: the first rule whose pattern is found
    in the last user message decides (a plain string is a substring, a compiled pattern
    is searched); its reply is a completion text, a ``SimReply``, a ``Fault``, or a
    function of the request returning one. Unmatched requests go to ``default``
    (the adapter-format default responder unless given).

        sim.respond_with(scripted([("capital of France", "[[ ## answer ## ]]\\nParis..."),
                                   (re.compile(r"\\bcrash\\b"), Fault.server_error())]))
    """
    fallback = default or default_responder
    compiled = [(p if isinstance(p, re.Pattern) else None, p, r) for p, r in rules]

    def respond(request: SimRequest) -> Any:
        text = request.last_user_text
        for regex, pattern, reply in compiled:
            hit = regex.search(text) if regex is not None else str(pattern) in text
            if hit:
                return reply(request) if callable(reply) else reply
        return fallback(request)

    return respond
