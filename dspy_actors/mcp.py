"""MCP tools: tools served by a Model Context Protocol server, usable by agents.

Two ways in, as in DSPy and beyond it:

- ``Tool.from_mcp_tool(session, mcp_tool)``: an *async* tool calling ``mcp_tool`` through
  an ``mcp.ClientSession`` you opened yourself (use it with ``await tool.acall(...)`` on
  the session's own event loop).
- :class:`MCPClient`: starts a server process over stdio and owns its session on a loop in
  a thread of its own; its :meth:`~MCPClient.tools` are plain (sync) tools, so any agent,
  in-process or served, calls them, each call bounded by a timeout.

        with MCPClient(sys.executable, ["-m", "my_server"]) as client:
            agent = dsa.ReAct("question -> answer", tools=client.tools())

An MCP error result (``isError``) raises :class:`MCPToolError` with the server's text, so a
ReAct agent sees it as the tool's observation. Needs the ``mcp`` package (extra ``mcp``).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import AsyncExitStack
from typing import Any, TextIO

from dspy_actors.signatures.custom_types._tool import Tool

__all__ = ["MCPClient", "MCPError", "MCPToolError", "tool_from_mcp"]

# JSON schema types to the Python types a tool validates its arguments into.
_JSON_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "array": list,
    "object": dict,
}


class MCPError(RuntimeError):
    """The MCP server could not be started, reached or answered in time."""


class MCPToolError(RuntimeError):
    """An MCP tool answered with an error result; the message is the server's text."""


def tool_from_mcp(session: Any, mcp_tool: Any) -> Tool:
    """An async :class:`Tool` that calls ``mcp_tool`` (an ``mcp.types.Tool``) through
    ``session`` (an initialised ``mcp.ClientSession``)."""
    name = str(mcp_tool.name)

    async def call(**kwargs: Any) -> Any:
        return result_value(name, await session.call_tool(name, arguments=kwargs))

    return _wrap(call, mcp_tool)


def _wrap(func: Any, mcp_tool: Any) -> Tool:
    schema = dict(_input_schema(mcp_tool))
    props: dict[str, Any] = {
        k: {kk: vv for kk, vv in dict(v).items() if kk != "title"}
        for k, v in (schema.get("properties") or {}).items()
    }
    required = set(schema.get("required") or [])
    for key, prop in props.items():  # a Tool's args mark optional ones by their default
        if key not in required and "default" not in prop:
            prop["default"] = None
    arg_types = {k: _JSON_TYPES.get(str(v.get("type")), Any) for k, v in props.items()}
    tool = Tool(
        func,
        name=str(mcp_tool.name),
        desc=str(mcp_tool.description or ""),
        args=props,
        arg_types=arg_types,
    )
    tool.defs = dict(schema.get("$defs") or {})
    tool.has_kwargs = False  # the server's schema is the contract
    return tool


def _input_schema(mcp_tool: Any) -> Mapping[str, Any]:
    # mcp 2.x names it input_schema; 1.x inputSchema.
    schema = getattr(mcp_tool, "input_schema", None) or getattr(mcp_tool, "inputSchema", None)
    return schema if isinstance(schema, Mapping) else {}


def result_value(tool: str, result: Any) -> Any:
    """An MCP ``CallToolResult`` as a Python value: its structured result if the server
    gave one, else its text content (one string, or a list for several parts); an error
    result raises :class:`MCPToolError`."""
    texts = [str(getattr(part, "text", part)) for part in getattr(result, "content", None) or []]
    is_error = getattr(result, "is_error", None)
    if is_error is None:
        is_error = getattr(result, "isError", False)
    if is_error:
        raise MCPToolError(f"MCP tool {tool!r} failed: {' '.join(texts) or 'no message'}")
    structured = getattr(result, "structured_content", None)
    if structured is None:
        structured = getattr(result, "structuredContent", None)
    if isinstance(structured, dict) and set(structured) == {"result"}:
        return structured["result"]
    if isinstance(structured, dict):
        return structured
    return texts[0] if len(texts) == 1 else texts


class MCPClient:
    """A stdio MCP server process and its client session, driven from any thread.

    The session lives on an event loop in a thread of its own (named
    ``thread_name``); calls from other threads are handed to it and waited for, at most
    ``timeout`` seconds each. Close it (or use ``with``) to end the server process.
    """

    def __init__(
        self,
        command: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        *,
        timeout: float = 30.0,
        errlog: TextIO | None = None,
        thread_name: str = "mcp-client",
    ) -> None:
        self.command = command
        self.args = list(args)
        self.env = dict(env) if env is not None else None
        self.timeout = timeout
        self._errlog = errlog
        self._thread_name = thread_name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: Any = None
        self._stop: asyncio.Event | None = None
        self._ready: Future[None] = Future()
        self._thread: threading.Thread | None = None
        self._mcp_tools: list[Any] = []

    # -- life ---------------------------------------------------------------------------
    def start(self) -> MCPClient:
        """Start the server and open the session (waits at most ``timeout``)."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._main, name=self._thread_name, daemon=True)
        self._thread.start()
        try:
            self._ready.result(timeout=self.timeout)
        except FutureTimeout:
            self.close()
            raise MCPError(
                f"MCP server {self._describe()} did not start within {self.timeout}s"
            ) from None
        except Exception as exc:
            self.close()
            raise MCPError(f"MCP server {self._describe()} failed to start: {exc}") from exc
        return self

    def close(self, timeout: float = 10.0) -> None:
        """End the session and the server process; joins the client thread."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop closed meanwhile
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> MCPClient:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(); nothing else waits on it
            if not self._ready.done():
                self._ready.set_exception(exc)

    async def _serve(self) -> None:
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client

        params = StdioServerParameters(command=self.command, args=self.args, env=self.env)
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with AsyncExitStack() as stack:
            read, write = await stack.enter_async_context(
                stdio_client(params, errlog=self._errlog or sys.stderr)
            )
            session = await stack.enter_async_context(ClientSession(read, write))
            await session.initialize()
            self._mcp_tools = list((await session.list_tools()).tools)
            self._session = session
            self._ready.set_result(None)
            await self._stop.wait()

    # -- use ----------------------------------------------------------------------------
    def tools(self) -> list[Tool]:
        """The server's tools as sync :class:`Tool` objects (listed when it started)."""
        self._require_started()
        return [self._sync_tool(t) for t in self._mcp_tools]

    def call(self, name: str, arguments: Mapping[str, Any], timeout: float | None = None) -> Any:
        """Call the server's tool ``name``; its value, or :class:`MCPToolError`."""
        self._require_started()
        assert self._loop is not None
        limit = self.timeout if timeout is None else timeout
        coro = self._session.call_tool(name, arguments=dict(arguments))
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return result_value(name, future.result(timeout=limit))
        except FutureTimeout:
            future.cancel()
            raise MCPError(f"MCP tool {name!r} did not answer within {limit}s") from None

    def _sync_tool(self, mcp_tool: Any) -> Tool:
        name = str(mcp_tool.name)

        def call(**kwargs: Any) -> Any:
            return self.call(name, kwargs)

        return _wrap(call, mcp_tool)

    def _require_started(self) -> None:
        if self._session is None:
            raise MCPError(f"MCP client for {self._describe()} is not started: call start()")

    def _describe(self) -> str:
        return " ".join([self.command, *self.args])
