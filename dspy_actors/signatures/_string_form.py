"""Parse the string form of a signature: ``"context: list[str], question -> answer: int"``.

A small tokenizer and recursive-descent parser. Nothing is ever ``eval``-ed: type names are
looked up in an allow-list (builtins, ``typing`` names, this package's custom types) plus
the ``custom_types`` the caller passes. A malformed string raises
:class:`SignatureSyntaxError`, which quotes the string and puts a caret under the problem.

Over 400 lines: one tokenizer and one recursive-descent parser for one small grammar, with
the error messages that quote it.
"""

from __future__ import annotations

import keyword
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

__all__ = [
    "ParsedField",
    "SignatureSyntaxError",
    "allowed_type_names",
    "caller_scope_lookup",
    "parse_signature_string",
    "parse_type_name",
]


class SignatureSyntaxError(ValueError):
    """A signature string that cannot be parsed. ``column`` is 1-based."""

    def __init__(self, text: str, position: int, problem: str) -> None:
        self.text = text
        self.column = position + 1
        self.problem = problem
        caret = " " * (position + 1) + "^"
        super().__init__(
            f'invalid signature string at column {self.column}: {problem}\n  "{text}"\n  {caret}'
        )


# Deeper type expressions are refused with a SignatureSyntaxError (no real type nests so).
MAX_TYPE_NESTING = 32


@dataclass(frozen=True, slots=True)
class ParsedField:
    name: str
    annotation: Any
    annotated: bool  # False when the string gave no type (defaults to str)


def allowed_type_names() -> dict[str, Any]:
    """Names a signature string may use without passing ``custom_types``."""
    from dspy_actors.signatures.custom_types import (
        Audio,
        Citations,
        Code,
        Document,
        History,
        Image,
        Reasoning,
        Tool,
    )
    from dspy_actors.signatures.custom_types._tool import ToolCalls

    return {
        "str": str,
        "int": int,
        "float": float,
        "bool": bool,
        "bytes": bytes,
        "list": list,
        "dict": dict,
        "tuple": tuple,
        "set": set,
        "frozenset": frozenset,
        "None": None,
        "Any": Any,
        "Optional": Optional,
        "Union": Union,
        "Literal": Literal,
        "List": list,
        "Dict": dict,
        "Tuple": tuple,
        "Set": set,
        "Image": Image,
        "Audio": Audio,
        "History": History,
        "Tool": Tool,
        "ToolCalls": ToolCalls,
        "Code": Code,
        "Reasoning": Reasoning,
        "Document": Document,
        "Citations": Citations,
    }


_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<arrow>->)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<ellipsis>\.\.\.)
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z_0-9]*(?:\.[A-Za-z_][A-Za-z_0-9]*)*)
  | (?P<punct>[:,\[\]|()])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # arrow, string, number, name, punct, end
    text: str
    pos: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            ch = text[pos]
            hint = " (unterminated string?)" if ch in "'\"" else ""
            raise SignatureSyntaxError(text, pos, f"unexpected character {ch!r}{hint}")
        kind = m.lastgroup or ""
        if kind != "space":
            tokens.append(_Token(kind, m.group(), pos))
        pos = m.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


ScopeLookup = Callable[[str], Any]
"""Finds a (possibly dotted) type name in the caller's scope; ``_NOT_FOUND`` if absent."""

_NOT_FOUND: Any = object()
# Prefixes a ported program writes before this package's type names: ``dspy.Image``.
_PACKAGE_ALIASES = ("dspy.", "dsa.", "dspy_actors.", "typing.")


class _Parser:
    def __init__(
        self, text: str, types: Mapping[str, Any], scope: ScopeLookup | None = None
    ) -> None:
        self.text = text
        self.types = types
        self.scope = scope
        self.tokens = _tokenize(text)
        self.i = 0

    # -- token helpers ------------------------------------------------------------------
    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def fail(self, problem: str, token: _Token | None = None) -> typing.NoReturn:
        raise SignatureSyntaxError(self.text, (token or self.tok).pos, problem)

    def at(self, text: str) -> bool:
        return self.tok.kind in ("punct", "arrow") and self.tok.text == text

    def expect(self, text: str, problem: str) -> _Token:
        if not self.at(text):
            self.fail(problem)
        return self.advance()

    def advance(self) -> _Token:
        tok = self.tok
        self.i += 1
        return tok

    def describe(self, tok: _Token) -> str:
        return "the end of the string" if tok.kind == "end" else repr(tok.text)

    # -- grammar ------------------------------------------------------------------------
    def signature(self) -> tuple[list[ParsedField], list[ParsedField]]:
        arrows = [t for t in self.tokens if t.kind == "arrow"]
        if not arrows:
            self.fail("expected '->' between the input and output fields", self.tokens[-1])
        if len(arrows) > 1:
            self.fail("more than one '->' (a signature is 'inputs -> outputs')", arrows[1])
        self._check_nesting()
        inputs = self.fields(stop="->")
        if not inputs:
            self.fail("expected at least one input field before '->'")
        self.expect("->", f"expected ',' or '->' but found {self.describe(self.tok)}")
        outputs = self.fields(stop="")
        if self.tok.kind != "end":
            self.fail(f"expected ',' or the end of the string but found {self.describe(self.tok)}")
        if not outputs:
            self.fail("expected at least one output field after '->'")
        seen: dict[str, int] = {}
        for f, tok in self._name_tokens:
            if f in seen:
                self.fail(f"duplicate field name {f!r}", tok)
            seen[f] = tok.pos
        return inputs, outputs

    _name_tokens: list[tuple[str, _Token]]

    def _check_nesting(self) -> None:
        """Refuse types nested deeper than any real one before parsing them (the parser,
        and the typing module after it, recurse once per level)."""
        depth = 0
        for tok in self.tokens:
            if tok.kind == "punct" and tok.text == "[":
                depth += 1
                if depth > MAX_TYPE_NESTING:
                    self.fail(f"types nested more than {MAX_TYPE_NESTING} levels deep", tok)
            elif tok.kind == "punct" and tok.text == "]":
                depth -= 1

    def fields(self, stop: str) -> list[ParsedField]:
        if not hasattr(self, "_name_tokens"):
            self._name_tokens = []
        out: list[ParsedField] = []
        if (stop and self.at(stop)) or (not stop and self.tok.kind == "end"):
            return out
        while True:
            out.append(self.field())
            if not self.at(","):
                return out
            self.advance()
            if (stop and self.at(stop)) or self.tok.kind == "end":
                self.fail("expected a field name after ','")

    def field(self) -> ParsedField:
        tok = self.tok
        if tok.kind != "name" or "." in tok.text:
            self.fail(f"expected a field name but found {self.describe(tok)}")
        if keyword.iskeyword(tok.text):
            self.fail(f"{tok.text!r} is a Python keyword and cannot be a field name")
        if tok.text.startswith("_"):
            self.fail("field names cannot start with '_'")
        self.advance()
        self._name_tokens.append((tok.text, tok))
        if not self.at(":"):
            return ParsedField(tok.text, str, annotated=False)
        self.advance()
        return ParsedField(tok.text, self.type_expr(), annotated=True)

    def type_expr(self) -> Any:
        start = self.tok
        options = [self.primary()]
        while self.at("|"):
            self.advance()
            options.append(self.primary())
        if len(options) == 1:
            return options[0]
        try:
            return Union[tuple(options)]  # noqa: UP007 - built from runtime values
        except TypeError as exc:
            self.fail(f"invalid union: {exc}", start)

    def lookup(self, tok: _Token) -> Any:
        """A type name: the allow-list and ``custom_types``, then the caller's scope (names
        only, looked up, never evaluated), then ``dspy.X``-style names of our own types."""
        name = tok.text
        if name in self.types:
            return self.types[name]
        if self.scope is not None:
            found = self.scope(name)
            if found is not _NOT_FOUND:
                return found
        for alias in _PACKAGE_ALIASES:
            if name.startswith(alias) and name[len(alias) :] in self.types:
                return self.types[name[len(alias) :]]
        known = ", ".join(sorted(k for k in self.types if "." not in k))
        self.fail(
            f"unknown type {name!r}; known types are {known}, and types in the caller's "
            "scope (pass custom_types={...} for others)",
            tok,
        )

    def primary(self) -> Any:
        tok = self.tok
        if self.at("("):  # a parenthesised union: str | (int | float)
            open_tok = self.advance()
            inner = self.type_expr()
            if not self.at(")"):
                self.fail(
                    f"expected ')' to close the '(' at column {open_tok.pos + 1} "
                    f"but found {self.describe(self.tok)}"
                )
            self.advance()
            return inner
        if tok.kind != "name":
            self.fail(f"expected a type name but found {self.describe(tok)}")
        self.advance()
        base = self.lookup(tok)
        if not self.at("["):
            if base is Optional or base is Union or base is Literal:
                self.fail(f"{tok.text} needs arguments, e.g. {tok.text}[...]")
            return type(None) if base is None else base
        open_tok = self.advance()
        takes_values = base is Literal or getattr(base, "language", None) is not None
        args = self.literal_args() if takes_values else self.type_args()  # Code["java"]
        if not self.at("]"):
            self.fail(
                f"expected ',' or ']' to close the '[' at column {open_tok.pos + 1} "
                f"but found {self.describe(self.tok)}"
            )
        self.advance()
        try:
            return base[args[0] if len(args) == 1 else tuple(args)]
        except TypeError as exc:
            self.fail(f"invalid type arguments for {tok.text}: {exc}", tok)

    def type_args(self) -> list[Any]:
        args = [self.type_arg()]
        while self.at(","):
            self.advance()
            args.append(self.type_arg())
        return args

    def type_arg(self) -> Any:
        if self.tok.kind == "ellipsis":  # tuple[int, ...]
            self.advance()
            return Ellipsis
        return self.type_expr()

    def literal_args(self) -> list[Any]:
        args = [self.literal_value()]
        while self.at(","):
            self.advance()
            args.append(self.literal_value())
        return args

    def literal_value(self) -> Any:
        tok = self.tok
        if tok.kind == "string":
            self.advance()
            return _unquote(tok.text)
        if tok.kind == "number":
            self.advance()
            return float(tok.text) if "." in tok.text else int(tok.text)
        if tok.kind == "name" and tok.text in ("True", "False", "None"):
            self.advance()
            return {"True": True, "False": False, "None": None}[tok.text]
        self.fail(
            "Literal values must be strings, numbers, True, False or None, "
            f"not {self.describe(tok)}"
        )


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"'}


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), body)


def parse_signature_string(
    text: str,
    custom_types: Mapping[str, Any] | None = None,
    scope: ScopeLookup | None = None,
) -> tuple[list[ParsedField], list[ParsedField]]:
    """Parse ``"a: int, b -> c: list[str]"`` into (input fields, output fields); ``scope``
    finds names not in the allow-list or ``custom_types`` (see :func:`caller_scope_lookup`)."""
    types = {**allowed_type_names(), **(custom_types or {})}
    return _Parser(text, types, scope).signature()


def parse_type_name(text: str, custom_types: Mapping[str, Any] | None = None) -> Any:
    """A type from its name as signatures print it (``list[str]``, ``Optional[int]``,
    ``Literal['a', 'b']``), using the same allow-list; nothing is evaluated."""
    types = {**allowed_type_names(), **(custom_types or {})}
    parser = _Parser(text, types)
    parser._name_tokens = []
    annotation = parser.type_expr()
    if parser.tok.kind != "end":
        parser.fail(f"unexpected {parser.describe(parser.tok)} after the type")
    return annotation


def caller_scope_lookup() -> ScopeLookup:
    """Looks names up where the signature string was written: the locals, then globals, of
    the first calling frame outside this package, following dots by attribute (``mod.T``).
    Only types (and typing's generic forms) are accepted; nothing is evaluated."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("dspy_actors."):
        frame = frame.f_back
    if frame is None:
        return lambda _name: _NOT_FOUND
    local_ns, global_ns = frame.f_locals, frame.f_globals  # read only, during the parse

    def lookup(name: str) -> Any:
        head, *rest = name.split(".")
        if head in local_ns:
            value = local_ns[head]
        elif head in global_ns:
            value = global_ns[head]
        else:
            return _NOT_FOUND
        for attr in rest:
            value = getattr(value, attr, _NOT_FOUND)
            if value is _NOT_FOUND:
                return _NOT_FOUND
        is_type = isinstance(value, type) or typing.get_origin(value) is not None
        return value if is_type else _NOT_FOUND

    return lookup
