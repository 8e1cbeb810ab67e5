"""OpenAI-compatible chat completions (OpenAI, vLLM, Ollama, llama.cpp server, LM Studio...).

Request: ``POST {api_base}/chat/completions`` with ``Authorization: Bearer <key>``; the
messages go as they are (our message format *is* this one). Streaming asks for a final
usage chunk (``stream_options.include_usage``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dspy_actors.lm._types import Completion
from dspy_actors.lm.errors import MalformedResponse
from dspy_actors.lm.providers._base import (
    Provider,
    StreamAccumulator,
    decode_event,
    error_fields,
    int_or_zero,
)
from dspy_actors.lm.providers._tool_wire import OpenAIToolDeltas, openai_tool_calls

__all__ = ["OpenAIProvider"]

# Reasoning models take max_completion_tokens instead of max_tokens.
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


class _OpenAIStream(StreamAccumulator):
    def __init__(self, endpoint: str, model: str) -> None:
        self._endpoint = endpoint
        self._model = model
        self._texts: dict[int, list[str]] = {}
        self._finish: dict[int, str | None] = {}
        self._usage: tuple[int, int] = (0, 0)
        self._served_model = model
        self._done = False
        self._tool_calls = OpenAIToolDeltas()

    def feed(self, event: str, data: str) -> list[tuple[int, str]]:
        if data.strip() == "[DONE]":
            self._done = True
            return []
        chunk = decode_event(data, "stream chunk", endpoint=self._endpoint, model=self._model)
        if "error" in chunk:
            message, _ = error_fields(data.encode())
            raise MalformedResponse(
                f"error inside stream: {message}", endpoint=self._endpoint, model=self._model
            )
        self._served_model = str(chunk.get("model") or self._served_model)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = (
                int_or_zero(usage.get("prompt_tokens")),
                int_or_zero(usage.get("completion_tokens")),
            )
        deltas: list[tuple[int, str]] = []
        for choice in chunk.get("choices") or ():
            index = int_or_zero(choice.get("index"))
            parts = self._texts.setdefault(index, [])
            delta = choice.get("delta") or {}
            if delta.get("tool_calls"):
                self._tool_calls.feed(index, delta)
            content = delta.get("content")
            if content:
                parts.append(content)
                deltas.append((index, content))
            if choice.get("finish_reason") is not None:
                self._finish[index] = choice["finish_reason"]
        return deltas

    @property
    def finished(self) -> bool:
        return self._done

    def completion(self) -> Completion:
        indices = sorted(self._texts) or [0]
        return Completion(
            outputs=["".join(self._texts.get(i, ())) for i in indices],
            finish_reasons=[self._finish.get(i) for i in indices],
            prompt_tokens=self._usage[0],
            completion_tokens=self._usage[1],
            model=self._served_model,
            tool_calls=self._tool_calls.result(indices),
        )


class OpenAIProvider(Provider):
    name = "openai"
    default_api_base = "https://api.openai.com/v1"
    supports_n = True
    supports_json_schema = True

    def endpoint(self, api_base: str) -> str:
        return api_base + "/chat/completions"

    def headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        return headers

    def build_body(
        self,
        model: str,
        messages: list[dict[str, Any]],
        params: Mapping[str, Any],
        response_format: Mapping[str, Any] | None,
        stream: bool,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "messages": messages}
        for key, value in params.items():
            if value is not None:
                body[key] = value
        if "top_k" in body and model.startswith(("gpt-", "o1", "o3", "o4")):
            del body["top_k"]  # OpenAI itself rejects top_k; compatible servers accept it
        if "max_tokens" in body and model.startswith(_REASONING_PREFIXES):
            body["max_completion_tokens"] = body.pop("max_tokens")
        if response_format is not None:
            body["response_format"] = response_format
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def parse(self, data: Any, *, endpoint: str, model: str) -> Completion:
        try:
            choices = data["choices"]
            outputs: list[str] = []
            finish: list[str | None] = []
            calls: list[list[dict[str, Any]]] = []
            for choice in choices:
                content = choice["message"].get("content")
                outputs.append(content if isinstance(content, str) else "")
                finish.append(choice.get("finish_reason"))
                calls.append(openai_tool_calls(choice["message"]))
        except (KeyError, TypeError, AttributeError) as exc:
            raise MalformedResponse(
                f"response has no choices[].message: {str(data)[:200]!r}",
                endpoint=endpoint,
                model=model,
            ) from exc
        if not outputs:
            raise MalformedResponse("response has no choices", endpoint=endpoint, model=model)
        usage = data.get("usage") or {}
        return Completion(
            outputs,
            finish,
            int_or_zero(usage.get("prompt_tokens")),
            int_or_zero(usage.get("completion_tokens")),
            str(data.get("model") or model),
            calls if any(calls) else None,
        )

    def accumulator(self, *, endpoint: str, model: str) -> StreamAccumulator:
        return _OpenAIStream(endpoint, model)
