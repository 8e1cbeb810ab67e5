"""Anthropic messages API.

Request: ``POST {api_base}/v1/messages`` with ``x-api-key`` and ``anthropic-version``.
Our OpenAI-format messages are translated: system messages move to the top-level
``system`` field, content parts become content blocks (images as base64 or URL sources),
and ``stop`` becomes ``stop_sequences``. ``max_tokens`` is required by the API, so a
default is supplied. The API has no ``n``: the LM asks several times instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dspy_actors.lm._types import Completion
from dspy_actors.lm.errors import BadRequest, MalformedResponse, ServerError
from dspy_actors.lm.providers._base import (
    Provider,
    StreamAccumulator,
    decode_event,
    int_or_zero,
)
from dspy_actors.lm.providers._tool_wire import (
    AnthropicToolStream,
    anthropic_tool_calls,
    anthropic_tool_choice,
    anthropic_tools,
    anthropic_turn,
)

__all__ = ["AnthropicProvider"]

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
_PASSTHROUGH = ("temperature", "top_p", "top_k", "metadata", "thinking")


def _image_block(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";", 1)[0] or "image/png"
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _content_blocks(content: Any) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    blocks: list[dict[str, Any]] = []
    for part in content or ():
        ptype = part.get("type")
        if ptype == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif ptype == "image_url":
            image = part.get("image_url")
            url = image.get("url", "") if isinstance(image, dict) else str(image or "")
            blocks.append(_image_block(url))
        else:
            raise BadRequest(f"the Anthropic messages API does not accept {ptype!r} content")
    return blocks


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") for p in content or () if p.get("type") == "text")


class _AnthropicStream(StreamAccumulator):
    def __init__(self, endpoint: str, model: str) -> None:
        self._endpoint = endpoint
        self._model = model
        self._served_model = model
        self._parts: list[str] = []
        self._input = 0
        self._output = 0
        self._stop: str | None = None
        self._done = False
        self._tools = AnthropicToolStream()

    def feed(self, event: str, data: str) -> list[tuple[int, str]]:
        msg = decode_event(
            data, f"stream event {event!r}", endpoint=self._endpoint, model=self._model
        )
        mtype = msg.get("type") or event
        if mtype == "content_block_delta":
            delta = msg.get("delta") or {}
            self._tools.delta(int_or_zero(msg.get("index")), delta)
            if delta.get("type") == "text_delta" and delta.get("text"):
                self._parts.append(delta["text"])
                return [(0, delta["text"])]
        elif mtype == "content_block_start":
            self._tools.start(int_or_zero(msg.get("index")), msg.get("content_block") or {})
        elif mtype == "message_start":
            message = msg.get("message") or {}
            self._served_model = str(message.get("model") or self._served_model)
            usage = message.get("usage") or {}
            self._input = int_or_zero(usage.get("input_tokens"))
            self._output = int_or_zero(usage.get("output_tokens"))
        elif mtype == "message_delta":
            self._stop = (msg.get("delta") or {}).get("stop_reason", self._stop)
            usage = msg.get("usage") or {}
            if "output_tokens" in usage:
                self._output = int_or_zero(usage.get("output_tokens"))
            if usage.get("input_tokens"):
                self._input = int_or_zero(usage.get("input_tokens"))
        elif mtype == "message_stop":
            self._done = True
        elif mtype == "error":
            err = msg.get("error") or {}
            # Mid-stream errors are overloads or internal errors: worth retrying.
            raise ServerError(
                f"error inside stream: {err.get('type')}: {err.get('message')}",
                endpoint=self._endpoint,
                model=self._model,
            )
        return []

    @property
    def finished(self) -> bool:
        return self._done

    def completion(self) -> Completion:
        return Completion(
            ["".join(self._parts)],
            [self._stop],
            self._input,
            self._output,
            self._served_model,
            self._tools.result(),
        )


class AnthropicProvider(Provider):
    name = "anthropic"
    default_api_base = "https://api.anthropic.com"
    supports_n = False
    supports_json_schema = False

    def endpoint(self, api_base: str) -> str:
        return api_base + ("/messages" if api_base.endswith("/v1") else "/v1/messages")

    def headers(self, api_key: str | None) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def build_body(
        self,
        model: str,
        messages: list[dict[str, Any]],
        params: Mapping[str, Any],
        response_format: Mapping[str, Any] | None,
        stream: bool,
    ) -> dict[str, Any]:
        system: list[str] = []
        turns: list[dict[str, Any]] = []
        for msg in messages:
            tool_turn = anthropic_turn(msg)  # tool_use / tool_result turns
            if msg.get("role") == "system":
                system.append(_text(msg.get("content")))
            elif tool_turn is not None:
                turns.append(tool_turn)
            else:
                turns.append({"role": msg["role"], "content": _content_blocks(msg.get("content"))})
        max_tokens = params.get("max_tokens")
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS,
            "messages": turns,
        }
        if system:
            body["system"] = "\n\n".join(system)
        for key in _PASSTHROUGH:
            if params.get(key) is not None:
                body[key] = params[key]
        if params.get("tools"):
            body["tools"] = anthropic_tools(params["tools"])
        if params.get("tool_choice") is not None:
            body["tool_choice"] = anthropic_tool_choice(params["tool_choice"])
        stop = params.get("stop")
        if stop:
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        # response_format has no Anthropic equivalent: the prompt asks for JSON instead.
        if stream:
            body["stream"] = True
        return body

    def parse(self, data: Any, *, endpoint: str, model: str) -> Completion:
        try:
            blocks = data["content"]
            text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
        except (KeyError, TypeError, AttributeError) as exc:
            raise MalformedResponse(
                f"response has no content blocks: {str(data)[:200]!r}",
                endpoint=endpoint,
                model=model,
            ) from exc
        usage = data.get("usage") or {}
        return Completion(
            [text],
            [data.get("stop_reason")],
            int_or_zero(usage.get("input_tokens")),
            int_or_zero(usage.get("output_tokens")),
            str(data.get("model") or model),
            [calls] if (calls := anthropic_tool_calls(blocks)) else None,
        )

    def accumulator(self, *, endpoint: str, model: str) -> StreamAccumulator:
        return _AnthropicStream(endpoint, model)
