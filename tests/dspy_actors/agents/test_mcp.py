"""MCP tools against a real MCP server process over stdio (dspy_actors.testing.mcp_server)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

import dspy_actors as dsa
from dspy_actors.mcp import MCPClient, MCPError, MCPToolError
from dspy_actors.runtime.app import App
from dspy_actors.testing.sim_agent import AgentContext, AgentStep, react_responder
from dspy_actors.testing.sim_lm import SimLM

pytest.importorskip("mcp")

SERVER = [sys.executable, "-m", "dspy_actors.testing.mcp_server"]


@pytest.fixture
def client() -> Iterator[MCPClient]:
    with MCPClient(SERVER[0], SERVER[1:], timeout=30.0) as started:
        yield started


def test_the_servers_tools_become_tools(client: MCPClient) -> None:
    tools = {t.name: t for t in client.tools()}
    assert set(tools) == {"add", "echo", "fail", "wait"}
    echo = tools["echo"]
    assert echo.desc.startswith("Repeat a text.")
    assert echo.required == ["text"]
    assert echo.args["times"]["default"] == 1
    assert tools["add"](a=2, b="3") == 5  # validated into ints, then sent
    assert echo(text="hi", times=2) == "hi hi"
    with pytest.raises(dsa.ToolArgumentError, match="argument 'a' of tool 'add'"):
        tools["add"](a="two", b=1)
    with pytest.raises(dsa.ToolArgumentError, match="'c'"):
        tools["add"](a=1, b=2, c=3)
    with pytest.raises(MCPToolError, match="boom"):
        tools["fail"](message="boom")


def test_a_slow_server_tool_is_bounded(client: MCPClient) -> None:
    with pytest.raises(MCPError, match=r"did not answer within 0\.05s"):
        client.call("wait", {"seconds": 5}, timeout=0.05)
    assert client.call("add", {"a": 1, "b": 1}) == 2  # the session is still usable


def test_many_threads_share_one_session(client: MCPClient) -> None:
    add = next(t for t in client.tools() if t.name == "add")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: add(a=i, b=i), range(32), timeout=60))
    assert results == [2 * i for i in range(32)]


def test_tool_from_mcp_tool_with_a_users_own_session() -> None:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    async def run() -> tuple[object, str]:
        params = StdioServerParameters(command=SERVER[0], args=SERVER[1:])
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            listed = (await session.list_tools()).tools
            tools = {t.name: dsa.Tool.from_mcp_tool(session, t) for t in listed}
            assert tools["add"].is_async
            total = await tools["add"].acall(a=4, b=5)
            with pytest.raises(MCPToolError, match="nope"):
                await tools["fail"].acall(message="nope")
            return total, await tools["echo"].acall(text="x")

    assert asyncio.run(asyncio.wait_for(run(), 60)) == (9, "x")


def test_a_react_agent_uses_mcp_tools_and_sees_their_errors(
    client: MCPClient, sim_lm: SimLM
) -> None:
    sim_lm.respond_with(
        react_responder(
            [
                AgentStep("add", {"a": 20, "b": 22}),
                AgentStep("fail", {"message": "disk full"}),
                AgentStep("finish"),
            ],
            answer=lambda ctx: {"answer": ctx.observations[0]},
        )
    )
    lm = dsa.LM("openai/sim-model", api_base=sim_lm.openai_base, api_key="k", cache=False)
    agent = dsa.ReAct("question -> answer", tools=client.tools())
    try:
        with dsa.context(lm=lm):
            pred = agent(question="what is 20 + 22?")
    finally:
        lm.close()
    assert pred.answer == "42"
    assert pred.trajectory["observation_0"] == 42
    assert "MCPToolError: MCP tool 'fail' failed:" in pred.trajectory["observation_1"]
    assert "disk full" in pred.trajectory["observation_1"]


def test_a_server_that_cannot_start_is_a_clear_error() -> None:
    with pytest.raises(MCPError, match=r"failed to start|did not start"):
        MCPClient(sys.executable, ["-c", "import sys; sys.exit(3)"], timeout=20).start()


def test_tools_before_start_is_a_clear_error() -> None:
    with pytest.raises(MCPError, match="not started"):
        MCPClient("nothing").tools()


def test_a_served_agent_uses_mcp_tools_under_load(
    client: MCPClient, app: App, sim_lm: SimLM
) -> None:
    def plan(ctx: AgentContext) -> AgentStep:
        n = int(ctx.inputs["question"])
        script = [AgentStep("add", {"a": n, "b": 1}), AgentStep("wait", {"seconds": 5 + n / 100})]
        return script[ctx.step] if ctx.step < len(script) else AgentStep("finish")

    sim_lm.respond_with(react_responder(plan, answer=lambda ctx: {"answer": ctx.observations[0]}))
    tools = {t.name: t for t in client.tools()}
    tools["wait"].timeout = 0.05  # the slow server tool is abandoned by the runner
    agent = dsa.ReAct("question -> answer", tools=list(tools.values()))
    results = app.serve("agent", agent).batch([{"question": str(n)} for n in range(16)])
    assert [r.answer for r in results] == [str(n + 1) for n in range(16)]
    assert all("did not answer" in r.trajectory["observation_1"] for r in results)
