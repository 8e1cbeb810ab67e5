"""A small MCP server over stdio, for tests and examples of MCP tools.

Run it as a process: ``python -m dspy_actors.testing.mcp_server``. Its tools: ``add``
(two integers), ``echo`` (a text), ``fail`` (always an error result, as a broken server
tool would give) and ``wait`` (sleeps, to play a slow server). It exits when its stdin
closes, as stdio MCP servers do.
"""

from __future__ import annotations

import asyncio

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("dspy-actors-test-server")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def echo(text: str, times: int = 1) -> str:
    """Repeat a text.

    Args:
        text: what to repeat
        times: how many times
    """
    return " ".join([text] * times)


@server.tool()
def fail(message: str) -> str:
    """Always fails with the given message."""
    raise ToolError(message)


@server.tool()
async def wait(seconds: float) -> str:
    """Sleep, then answer."""
    await asyncio.sleep(seconds)
    return f"waited {seconds}s"


if __name__ == "__main__":
    server.run("stdio")
