"""``Tool``: a Python function an LM may call, with a JSON schema built from its type hints."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from typing import Any, get_type_hints

from pydantic import TypeAdapter
from pydantic_core import core_schema

from dspy_actors.signatures.custom_types.base import CustomType

__all__ = ["Tool"]


class Tool(CustomType):
    """Wrap a function as a tool: ``Tool(search)``.

    ``name`` and ``desc`` default to the function's name and docstring; ``args`` maps each
    parameter to its JSON schema (from the type hints, with the descriptions of a Google-style
    ``Args:`` section). Calling the tool validates the arguments into their declared types.
    """

    def __init__(
        self, func: Callable[..., Any], *, name: str | None = None, desc: str | None = None
    ) -> None:
        if not callable(func):
            raise TypeError(f"Tool needs a callable, not {type(func).__name__}")
        self.func = func
        self.name = name or getattr(func, "__name__", type(func).__name__)
        doc = inspect.getdoc(func) or ""
        summary, arg_docs = _split_docstring(doc)
        self.desc = desc if desc is not None else summary
        self.arg_types: dict[str, Any] = {}
        self.args: dict[str, dict[str, Any]] = {}
        self.required: list[str] = []
        self.has_kwargs = False
        self._inspect_parameters(arg_docs)

    def _inspect_parameters(self, arg_docs: dict[str, str]) -> None:
        target = self.func if inspect.isroutine(self.func) else type(self.func).__call__
        hints = get_type_hints(target)
        for pname, param in inspect.signature(self.func).parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                self.has_kwargs = True
                continue
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                continue
            annotation = hints.get(pname, Any)
            schema = TypeAdapter(annotation).json_schema()
            schema.pop("title", None)
            if pname in arg_docs:
                schema["description"] = arg_docs[pname]
            self.arg_types[pname] = annotation
            self.args[pname] = schema
            if param.default is inspect.Parameter.empty:
                self.required.append(pname)

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of the arguments object."""
        return {"type": "object", "properties": self.args, "required": list(self.required)}

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry for this function."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.desc,
                "parameters": self.json_schema(),
            },
        }

    def __call__(self, **kwargs: Any) -> Any:
        unknown = sorted(set(kwargs) - set(self.args))
        if unknown and not self.has_kwargs:
            raise TypeError(f"tool {self.name!r} got unexpected argument(s) {unknown}")
        missing = [a for a in self.required if a not in kwargs]
        if missing:
            raise TypeError(f"tool {self.name!r} is missing required argument(s) {missing}")
        parsed = {
            k: TypeAdapter(self.arg_types[k]).validate_python(v) if k in self.arg_types else v
            for k, v in kwargs.items()
        }
        return self.func(**parsed)

    def format(self) -> str:
        return f"{self.name}: {self.desc} Arguments: {json.dumps(self.args, ensure_ascii=False)}"

    def __repr__(self) -> str:
        return f"Tool(name={self.name!r}, desc={self.desc!r}, args={self.args!r})"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        # Lets pydantic validate fields typed ``Tool`` / ``list[Tool]`` (instances only).
        return core_schema.is_instance_schema(cls)


_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _split_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The description and the per-argument descriptions of a Google-style docstring."""
    lines = doc.splitlines()
    summary: list[str] = []
    args: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in lines:
        stripped = line.strip()
        if re.fullmatch(r"(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?):", stripped):
            section = stripped[:-1]
            current = None
            continue
        if section is None:
            summary.append(line)
        elif section in ("Args", "Arguments", "Parameters"):
            m = _ARG_LINE.match(line)
            if m and (line.startswith(" ") or line.startswith("\t") or current is None):
                indent = len(line) - len(line.lstrip())
                if current is None or indent <= _indent_of_first_arg(lines, section):
                    current = m.group(1).lstrip("*")
                    args[current] = m.group(2).strip()
                    continue
            if current and stripped:
                args[current] = f"{args[current]} {stripped}".strip()
    return "\n".join(summary).strip(), args


def _indent_of_first_arg(lines: list[str], section: str) -> int:
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == f"{section}:")
    except StopIteration:
        return 0
    for ln in lines[start + 1 :]:
        if ln.strip():
            return len(ln) - len(ln.lstrip())
    return 0
