"""Tool: schemas from type hints, DSPy's overrides, async tools and argument errors."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from dspy_actors import Tool, ToolArgumentError


def greet(name: str, times: int = 2, loud: bool = False) -> str:
    """Greet someone.

    Args:
        name: who to greet
    """
    return ("HI " if loud else "hi ") * times + name


def test_defaults_are_in_args_and_only_required_ones_are_required() -> None:
    tool = Tool(greet)
    assert tool.args["times"] == {"type": "integer", "default": 2}
    assert tool.args["loud"]["default"] is False
    assert tool.args["name"] == {"type": "string", "description": "who to greet"}
    assert tool.required == ["name"]
    assert tool(name="bo") == "hi hi bo"


def test_args_arg_types_and_arg_desc_override_what_is_inferred() -> None:
    tool = Tool(
        greet,
        args={"name": {"type": "string"}, "times": {"type": "integer", "default": 1}},
        arg_desc={"name": "the person"},
    )
    assert set(tool.args) == {"name", "times"}
    assert tool.required == ["name"]
    with pytest.raises(ToolArgumentError, match="'loud'"):
        tool(name="x", loud=True)  # not in the overriding schema
    typed = Tool(greet, arg_types={"name": str, "times": str})
    assert typed.arg_types["times"] is str
    assert Tool(greet, arg_desc={"times": "how often"}).args["times"]["description"] == "how often"


class Counter:
    def __call__(self, step: int) -> int:
        """Count up by step."""
        return step + 1


class Documented:
    """Doubles numbers."""

    def __call__(self, x: int) -> int:
        """Not this one."""
        return 2 * x


def test_a_callable_objects_description_comes_from_its_own_doc_else_call() -> None:
    assert Tool(Counter()).desc == "Count up by step."
    assert Tool(Counter()).name == "Counter"
    assert Tool(Counter())(step="3") == 4
    assert Tool(Documented()).desc == "Doubles numbers."


class Address(BaseModel):
    city: str


class Person(BaseModel):
    name: str
    home: Address


def register(person: Person, friends: list[Person]) -> str:
    """Register a person."""
    return f"{person.name} from {person.home.city} with {len(friends)} friends"


def test_nested_model_defs_are_hoisted_so_refs_resolve() -> None:
    tool = Tool(register)
    params = tool.to_openai()["function"]["parameters"]
    assert "$defs" not in params["properties"]["person"]
    assert set(params["$defs"]) >= {"Address", "Person"}

    def refs(node: object) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if "$ref" in node else []
            return own + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(params):
        assert ref.startswith("#/$defs/"), ref
        assert ref.split("/")[-1] in params["$defs"], ref
    assert tool.to_anthropic()["input_schema"] == params
    person = {"name": "Al", "home": {"city": "Oslo"}}
    assert tool(person=person, friends=[person]) == "Al from Oslo with 1 friends"


def test_a_bad_argument_names_the_tool_and_the_argument() -> None:
    tool = Tool(greet)
    with pytest.raises(ToolArgumentError) as bad_type:
        tool(name="x", times="many")
    assert bad_type.value.tool == "greet"
    assert bad_type.value.argument == "times"
    assert "argument 'times' of tool 'greet'" in str(bad_type.value)
    with pytest.raises(ToolArgumentError, match="missing required") as missing:
        tool(times=1)
    assert missing.value.argument == "name"
    with pytest.raises(ToolArgumentError, match="must be an object"):
        tool.validate_args(["x"])  # type: ignore[arg-type]


async def fetch(url: str) -> str:
    """Fetch a page."""
    await asyncio.sleep(0)
    return f"page at {url}"


def test_async_tools_run_from_sync_and_async_code() -> None:
    tool = Tool(fetch)
    assert tool.is_async
    assert tool.desc == "Fetch a page."
    assert tool(url="u") == "page at u"
    assert asyncio.run(tool.acall(url="v")) == "page at v"
    assert asyncio.run(Tool(greet).acall(name="z")) == "hi hi z"

    async def inside_a_loop() -> None:
        with pytest.raises(RuntimeError, match="acall"):
            tool(url="w")

    asyncio.run(inside_a_loop())


def test_bad_timeout_or_concurrency_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout"):
        Tool(greet, timeout=0)
    with pytest.raises(ValueError, match="max_concurrency"):
        Tool(greet, max_concurrency=0)
    with pytest.raises(TypeError, match="callable"):
        Tool("greet")  # type: ignore[arg-type]


def test_str_is_dspys_instruction_line() -> None:
    assert str(Tool(greet)).startswith("greet, whose description is <desc>Greet someone.</desc>.")
    assert "It takes arguments {'name'" in str(Tool(greet))
