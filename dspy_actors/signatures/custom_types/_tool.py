"""``Tool``: a Python function an LM may call, with a JSON schema built from its type hints."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, get_type_hints

from pydantic import BaseModel, TypeAdapter, ValidationError, model_validator
from pydantic import Field as PydanticField
from pydantic_core import core_schema

from dspy_actors.signatures.custom_types._base import CustomType

__all__ = ["Tool", "ToolArgumentError", "ToolCall", "ToolCalls"]


class ToolArgumentError(TypeError, ValueError):
    """The arguments an LM (or a caller) gave a tool do not fit it. ``tool`` names the tool,
    ``argument`` the offending argument (None when several are at fault, e.g. missing)."""

    def __init__(self, tool: str, argument: str | None, problem: str) -> None:
        where = f"argument {argument!r} of tool {tool!r}" if argument else f"tool {tool!r}"
        super().__init__(f"{where}: {problem}")
        self.tool = tool
        self.argument = argument


class Tool(CustomType):
    """Wrap a function as a tool: ``Tool(search)``.

    ``name`` and ``desc`` default to the function's name and docstring (a callable object's
    own docstring, else its ``__call__``'s); ``args`` maps each parameter to its JSON schema
    (from the type hints, with the descriptions of a Google-style ``Args:`` section and the
    parameter's default). ``args=``, ``arg_types=`` and ``arg_desc=`` override what is
    inferred, as in DSPy. Calling the tool validates the arguments into their declared
    types; a bad argument raises :class:`ToolArgumentError` naming the tool and argument.

    Async functions are tools too: ``await tool.acall(**args)`` runs them on the running
    loop, and a plain call runs them to completion in the calling thread. ``timeout`` and
    ``max_concurrency`` are what a supervised runner
    (:class:`dspy_actors.runtime._tools.ToolRunner`) enforces for this tool.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        name: str | None = None,
        desc: str | None = None,
        args: Mapping[str, Any] | None = None,
        arg_types: Mapping[str, Any] | None = None,
        arg_desc: Mapping[str, str] | None = None,
        *,
        timeout: float | None = None,
        max_concurrency: int | None = None,
    ) -> None:
        if not callable(func):
            raise TypeError(f"Tool needs a callable, not {type(func).__name__}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"Tool timeout must be positive seconds, not {timeout!r}")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"Tool max_concurrency must be >= 1, not {max_concurrency!r}")
        self.func = func
        self.name: str = name or str(getattr(func, "__name__", type(func).__name__))
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        target = _signature_target(func)
        summary, doc_args = _split_docstring(_own_doc(func) or inspect.getdoc(target) or "")
        self.desc = desc if desc is not None else summary
        self.is_async = inspect.iscoroutinefunction(target)
        self.arg_types: dict[str, Any] = {}
        self.args: dict[str, dict[str, Any]] = {}
        self.required: list[str] = []
        self.has_kwargs = False
        self.defs: dict[str, Any] = {}  # nested models' schemas, hoisted for every argument
        self._inspect_parameters(target, {**doc_args, **(arg_desc or {})})
        if arg_types is not None:
            self.arg_types = dict(arg_types)
        if args is not None:
            self.args = {k: dict(v) for k, v in args.items()}
            self.required = [k for k, v in self.args.items() if "default" not in v]
            self.defs = {}
            if arg_types is None:  # the given schemas are the contract: no inferred types
                self.arg_types = {k: t for k, t in self.arg_types.items() if k in self.args}

    def _inspect_parameters(self, target: Callable[..., Any], arg_docs: Mapping[str, str]) -> None:
        try:
            hints = get_type_hints(target)
        except Exception:  # unresolvable forward references: treat them as Any
            hints = {}
        for pname, param in inspect.signature(target).parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                self.has_kwargs = True
                continue
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                continue
            annotation = hints.get(pname, Any)
            schema = self._hoist_defs(pname, TypeAdapter(annotation).json_schema())
            schema.pop("title", None)
            if pname in arg_docs:
                schema["description"] = arg_docs[pname]
            if param.default is not inspect.Parameter.empty:
                schema["default"] = _jsonable_default(param.default)
            else:
                self.required.append(pname)
            self.arg_types[pname] = annotation
            self.args[pname] = schema

    def _hoist_defs(self, arg: str, schema: dict[str, Any]) -> dict[str, Any]:
        """Move a nested model's local ``$defs`` up to the tool's parameters schema, where
        its ``#/$defs/...`` references point once the argument is embedded there."""
        local = schema.pop("$defs", None) or {}
        for def_name, def_schema in local.items():
            known = self.defs.get(def_name)
            if known is not None and known != def_schema:
                raise ValueError(
                    f"tool {self.name!r}: argument {arg!r} defines a different model named "
                    f"{def_name!r} than another argument; rename one of the two classes"
                )
            self.defs[def_name] = def_schema
        return schema

    @classmethod
    def from_mcp_tool(cls, session: Any, mcp_tool: Any) -> Tool:
        """DSPy's ``Tool.from_mcp_tool``: an async tool calling ``mcp_tool`` through an
        initialised ``mcp.ClientSession`` (see :mod:`dspy_actors.mcp`, which also has a
        client that starts a server and gives sync tools)."""
        from dspy_actors.mcp import tool_from_mcp

        return tool_from_mcp(session, mcp_tool)

    # -- schemas ------------------------------------------------------------------------
    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of the arguments object (nested models under ``$defs``)."""
        schema: dict[str, Any] = {
            "type": "object",
            "properties": self.args,
            "required": list(self.required),
        }
        if self.defs:
            schema["$defs"] = self.defs
        return schema

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

    def to_anthropic(self) -> dict[str, Any]:
        """The Anthropic ``tools`` entry for this function."""
        return {"name": self.name, "description": self.desc, "input_schema": self.json_schema()}

    # -- calling ------------------------------------------------------------------------
    def validate_args(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """``kwargs`` parsed into the declared types; :class:`ToolArgumentError` names the
        first argument that is unknown, missing or of the wrong type."""
        if not isinstance(kwargs, Mapping):
            raise ToolArgumentError(
                self.name, None, f"arguments must be an object, not {type(kwargs).__name__}"
            )
        unknown = sorted(set(kwargs) - set(self.args))
        if unknown and not self.has_kwargs:
            raise ToolArgumentError(
                self.name, unknown[0], f"unexpected argument (it takes {sorted(self.args)})"
            )
        missing = [a for a in self.required if a not in kwargs]
        if missing:
            raise ToolArgumentError(
                self.name, missing[0], f"missing required argument(s) {missing}"
            )
        parsed: dict[str, Any] = {}
        for key, value in kwargs.items():
            annotation = self.arg_types.get(key, Any)
            if annotation is Any:
                parsed[key] = value
                continue
            try:
                parsed[key] = self._adapter(key, annotation).validate_python(value)
            except ValidationError as exc:
                problems = "; ".join(e["msg"] for e in exc.errors()[:3])
                raise ToolArgumentError(
                    self.name, key, f"{value!r} is not a valid {_type_name(annotation)}: {problems}"
                ) from None
        return parsed

    def _adapter(self, key: str, annotation: Any) -> TypeAdapter[Any]:
        # Building a TypeAdapter costs far more than validating with one: build each once.
        cache: dict[str, tuple[Any, TypeAdapter[Any]]] = self.__dict__.setdefault("_adapters", {})
        known = cache.get(key)
        if known is None or known[0] is not annotation:
            known = cache[key] = (annotation, TypeAdapter(annotation))
        return known[1]

    def __call__(self, **kwargs: Any) -> Any:
        """Run the tool in this thread (an async tool runs to completion on a private
        loop; inside a running loop, use :meth:`acall`)."""
        parsed = self.validate_args(kwargs)
        if not self.is_async:
            return self.func(**parsed)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.func(**parsed))
        raise RuntimeError(
            f"tool {self.name!r} is async and an event loop is running here: "
            f"use `await tool.acall(...)`"
        )

    async def acall(self, **kwargs: Any) -> Any:
        """Run the tool from async code: an async tool on this loop, a sync one in a
        worker thread (so the loop is never blocked)."""
        parsed = self.validate_args(kwargs)
        if self.is_async:
            return await self.func(**parsed)
        return await asyncio.to_thread(self.func, **parsed)

    # -- text ---------------------------------------------------------------------------
    def format(self) -> str:
        return f"{self.name}: {self.desc} Arguments: {json.dumps(self.args, ensure_ascii=False)}"

    def __str__(self) -> str:
        # DSPy's line for a tool in an agent's instructions.
        desc = f", whose description is <desc>{self.desc}</desc>." if self.desc else "."
        return f"{self.name}{desc.replace(chr(10), '  ')} It takes arguments {self.args}."

    def __repr__(self) -> str:
        return f"Tool(name={self.name!r}, desc={self.desc!r}, args={self.args!r})"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        # Lets pydantic validate fields typed ``Tool`` / ``list[Tool]`` (instances only).
        return core_schema.is_instance_schema(cls)


def _signature_target(func: Callable[..., Any]) -> Callable[..., Any]:
    """What to read parameters and hints from: the function, or a callable's ``__call__``."""
    if inspect.isroutine(func) or isinstance(func, type):
        return func
    call: Callable[..., Any] = type(func).__call__
    return call.__get__(func, type(func))  # type: ignore[no-any-return]


def _own_doc(func: Callable[..., Any]) -> str | None:
    """A function's docstring, or a callable object's class's own (not inherited) one."""
    if inspect.isroutine(func) or isinstance(func, type):
        return inspect.getdoc(func)
    doc = type(func).__dict__.get("__doc__")
    return inspect.cleandoc(doc) if isinstance(doc, str) else None


def _jsonable_default(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


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


class ToolCall(BaseModel):
    """One tool call an LM made: the tool's ``name``, its ``args``, and the provider's
    call ``id`` (native function calling), if any."""

    name: str
    args: dict[str, Any] = PydanticField(default_factory=dict)
    id: str | None = None

    def execute(self, functions: Mapping[str, Any] | Iterable[Any] | None = None) -> Any:
        """Run the call with the matching tool of ``functions`` (a name -> tool/function
        mapping, or a list of tools or functions); an unknown name is a
        :class:`ToolArgumentError`."""
        if functions is None:
            raise ValueError(f"no tools given to execute the call to {self.name!r}")
        table: dict[str, Any] = {}
        if isinstance(functions, Mapping):
            table.update(functions)
        else:
            items: list[Any] = list(functions)
            tools = [f if isinstance(f, Tool) else Tool(f) for f in items]
            table.update((t.name, t) for t in tools)
        target = table.get(self.name)
        if target is None:
            raise ToolArgumentError(self.name, None, f"no such tool (have {sorted(table)})")
        tool = target if isinstance(target, Tool) else Tool(target, name=self.name)
        return tool(**self.args)


class ToolCalls(BaseModel, CustomType):
    """An output type for native function calling: the tool calls the LM chose, as in
    DSPy. With an adapter that uses native function calling, a signature with a
    ``list[Tool]`` input and a ``ToolCalls`` output sends the tools in the provider's
    ``tools`` field and fills this output from the response's tool calls."""

    tool_calls: list[ToolCall]

    @model_validator(mode="before")
    @classmethod
    def _accept_a_bare_list(cls, data: Any) -> Any:
        if isinstance(data, list):
            return {"tool_calls": data}
        if isinstance(data, dict) and "tool_calls" not in data and "name" in data:
            return {"tool_calls": [data]}
        return data

    @classmethod
    def from_dict_list(cls, calls: Iterable[Mapping[str, Any]]) -> ToolCalls:
        """From ``[{"name": ..., "args": {...}}, ...]``."""
        return cls(tool_calls=[ToolCall(**dict(c)) for c in calls])

    def format(self) -> str:
        calls = [{"name": c.name, "args": c.args} for c in self.tool_calls]
        return json.dumps({"tool_calls": calls}, ensure_ascii=False)

    def execute(self, functions: Mapping[str, Any] | Iterable[Any] | None = None) -> list[Any]:
        """Run every call in order; their results."""
        return [call.execute(functions) for call in self.tool_calls]
