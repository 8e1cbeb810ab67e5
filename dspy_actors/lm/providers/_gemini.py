"""Google Gemini, through its native ``generateContent`` API.

``LM("gemini/gemini-2.5-flash", api_key=...)`` (or ``GEMINI_API_KEY``). Requests go to
``{api_base}/models/<model>:generateContent`` (streamed: ``:streamGenerateContent?alt=sse``)
with the key in an ``x-goog-api-key`` header. Our OpenAI-format messages are translated:
system messages become ``systemInstruction``, assistant turns are role ``model``, images
become ``inlineData`` (data URLs) or ``fileData`` (other URLs); sampling parameters move
into ``generationConfig`` (``max_tokens`` -> ``maxOutputTokens``, ``n`` ->
``candidateCount``, ``stop`` -> ``stopSequences``...), and a JSON response format becomes
``responseMimeType: application/json``. Finish reasons are reported in OpenAI's words
(``STOP`` -> ``stop``, ``MAX_TOKENS`` -> ``length``, safety stops -> ``content_filter``).
An invalid key (Gemini answers 400 ``API_KEY_INVALID``) is an authentication error.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from dspy_actors.lm._types import Completion
from dspy_actors.lm.errors import (
    AuthenticationError,
    BadRequest,
    LMError,
    MalformedResponse,
    ServerError,
)
from dspy_actors.lm.providers._base import (
    Provider,
    StreamAccumulator,
    decode_event,
    error_fields,
    http_error,
    int_or_zero,
)

__all__ = ["GeminiProvider"]

# Our (OpenAI's) parameter names -> generationConfig's.
_CONFIG_NAMES = {
    "temperature": "temperature",
    "max_tokens": "maxOutputTokens",
    "max_completion_tokens": "maxOutputTokens",
    "top_p": "topP",
    "top_k": "topK",
    "n": "candidateCount",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}
# Request fields of Gemini's own that may be passed through as LM keyword arguments.
_PASSTHROUGH = ("safetySettings", "tools", "toolConfig", "cachedContent", "thinkingConfig")
_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
}


def _finish(reason: Any) -> str | None:
    if reason is None:
        return None
    return _FINISH.get(str(reason), str(reason).lower())


def _part(part: Mapping[str, Any]) -> dict[str, Any]:
    ptype = part.get("type")
    if ptype == "text":
        return {"text": str(part.get("text", ""))}
    if ptype == "image_url":
        image = part.get("image_url")
        url = image.get("url", "") if isinstance(image, Mapping) else str(image or "")
        if url.startswith("data:"):
            header, _, data = url.partition(",")
            mime = header[5:].split(";", 1)[0] or "image/png"
            return {"inlineData": {"mimeType": mime, "data": data}}
        mime = mimetypes.guess_type(url)[0] or "image/jpeg"
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    raise BadRequest(f"the Gemini API does not accept {ptype!r} content here")


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}]
    return [_part(p) for p in content or ()]


def _texts(candidate: Mapping[str, Any]) -> str:
    parts = (candidate.get("content") or {}).get("parts") or ()
    # "thought" parts are the model's thinking summary, not its answer.
    return "".join(str(p.get("text", "")) for p in parts if "text" in p and not p.get("thought"))


def _usage(data: Mapping[str, Any]) -> tuple[int, int]:
    usage = data.get("usageMetadata") or {}
    completion = int_or_zero(usage.get("candidatesTokenCount")) + int_or_zero(
        usage.get("thoughtsTokenCount")
    )
    return int_or_zero(usage.get("promptTokenCount")), completion


class _GeminiStream(StreamAccumulator):
    def __init__(self, endpoint: str, model: str) -> None:
        self._endpoint = endpoint
        self._model = model
        self._served_model = model
        self._texts: dict[int, list[str]] = {}
        self._finish: dict[int, str | None] = {}
        self._usage = (0, 0)

    def feed(self, event: str, data: str) -> list[tuple[int, str]]:
        chunk = decode_event(data, "stream chunk", endpoint=self._endpoint, model=self._model)
        if "error" in chunk:
            message, _ = error_fields(data.encode())
            raise ServerError(
                f"error inside stream: {message}", endpoint=self._endpoint, model=self._model
            )
        self._served_model = str(chunk.get("modelVersion") or self._served_model)
        if "usageMetadata" in chunk:
            self._usage = _usage(chunk)
        deltas: list[tuple[int, str]] = []
        for candidate in chunk.get("candidates") or ():
            index = int_or_zero(candidate.get("index"))
            text = _texts(candidate)
            self._texts.setdefault(index, [])
            if text:
                self._texts[index].append(text)
                deltas.append((index, text))
            if candidate.get("finishReason") is not None:
                self._finish[index] = _finish(candidate["finishReason"])
        return deltas

    @property
    def finished(self) -> bool:
        # No end marker: the stream is done when every candidate has its finish reason.
        return bool(self._texts) and all(i in self._finish for i in self._texts)

    def completion(self) -> Completion:
        indices = sorted(self._texts) or [0]
        return Completion(
            ["".join(self._texts.get(i, ())) for i in indices],
            [self._finish.get(i) for i in indices],
            self._usage[0],
            self._usage[1],
            self._served_model,
        )


class GeminiProvider(Provider):
    name = "gemini"
    default_api_base = "https://generativelanguage.googleapis.com/v1beta"
    supports_n = True
    supports_json_schema = False  # JSON mode (responseMimeType), not OpenAI's json_schema
    api_key_env = "GEMINI_API_KEY"

    def __init__(self, model: str = "") -> None:
        self.model = model

    def bind(self, model: str, api_base: str, options: Mapping[str, Any]) -> GeminiProvider:
        if not model:
            raise ValueError("a Gemini model is 'gemini/<model>', e.g. 'gemini/gemini-2.5-flash'")
        return GeminiProvider(model)

    def endpoint(self, api_base: str) -> str:
        return f"{api_base}/models/{quote(self.model, safe='')}:generateContent"

    def stream_endpoint(self, api_base: str) -> str:
        return f"{api_base}/models/{quote(self.model, safe='')}:streamGenerateContent?alt=sse"

    def headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            headers["x-goog-api-key"] = api_key
        return headers

    def build_body(
        self,
        model: str,
        messages: list[dict[str, Any]],
        params: Mapping[str, Any],
        response_format: Mapping[str, Any] | None,
        stream: bool,
    ) -> dict[str, Any]:
        system: list[dict[str, Any]] = []
        contents: list[dict[str, Any]] = []
        for msg in messages:
            role = msg.get("role")
            if role == "system":
                system.extend(_parts(msg.get("content")))
            elif role in ("user", "assistant"):
                turn_role = "model" if role == "assistant" else "user"
                contents.append({"role": turn_role, "parts": _parts(msg.get("content"))})
            else:
                raise BadRequest(f"the Gemini API has no {role!r} messages")
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": system}
        config: dict[str, Any] = {}
        for key, value in params.items():
            if value is None:
                continue
            if key in _CONFIG_NAMES:
                config[_CONFIG_NAMES[key]] = value
            elif key == "stop":
                config["stopSequences"] = [value] if isinstance(value, str) else list(value)
            elif key in _PASSTHROUGH:
                body[key] = value
            else:
                raise BadRequest(
                    f"the Gemini API has no parameter {key!r}; it takes "
                    f"{sorted([*_CONFIG_NAMES, 'stop', *_PASSTHROUGH])}"
                )
        if response_format is not None and response_format.get("type") in (
            "json_object",
            "json_schema",
        ):
            config["responseMimeType"] = "application/json"
        if config:
            body["generationConfig"] = config
        return body

    def parse(self, data: Any, *, endpoint: str, model: str) -> Completion:
        if not isinstance(data, Mapping):
            raise MalformedResponse(
                f"response is not an object: {str(data)[:200]!r}", endpoint=endpoint, model=model
            )
        candidates = data.get("candidates")
        if not candidates:
            feedback = data.get("promptFeedback") or {}
            reason = feedback.get("blockReason") if isinstance(feedback, Mapping) else None
            if reason:
                raise BadRequest(
                    f"Gemini blocked the prompt ({reason})", endpoint=endpoint, model=model
                )
            raise MalformedResponse(
                f"response has no candidates: {str(data)[:200]!r}", endpoint=endpoint, model=model
            )
        try:
            ordered = sorted(candidates, key=lambda c: int_or_zero(c.get("index")))
            outputs = [_texts(c) for c in ordered]
            finish = [_finish(c.get("finishReason")) for c in ordered]
        except (TypeError, AttributeError) as exc:
            raise MalformedResponse(
                f"response has malformed candidates: {str(data)[:200]!r}",
                endpoint=endpoint,
                model=model,
            ) from exc
        prompt, completion = _usage(data)
        return Completion(
            outputs, finish, prompt, completion, str(data.get("modelVersion") or model)
        )

    def accumulator(self, *, endpoint: str, model: str) -> StreamAccumulator:
        return _GeminiStream(endpoint, model)

    def error(
        self, status: int, headers: Mapping[str, str], body: bytes, *, endpoint: str, model: str
    ) -> LMError:
        message, code = error_fields(body)
        if status == 400 and (b"API_KEY_INVALID" in body or "API key not valid" in message):
            return AuthenticationError(
                f"authentication failed, HTTP 400: {message}",
                endpoint=endpoint,
                model=model,
                status=status,
            )
        return http_error(status, headers, message, code, endpoint=endpoint, model=model)
