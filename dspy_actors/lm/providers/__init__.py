"""Wire formats the LM speaks, one module each, and the lookup from a model string."""

from __future__ import annotations

from dspy_actors.lm.providers._anthropic import AnthropicProvider
from dspy_actors.lm.providers._azure import AzureOpenAIProvider
from dspy_actors.lm.providers._base import Provider
from dspy_actors.lm.providers._gemini import GeminiProvider
from dspy_actors.lm.providers._openai import OpenAIProvider

__all__ = [
    "AnthropicProvider",
    "AzureOpenAIProvider",
    "GeminiProvider",
    "OpenAIProvider",
    "Provider",
    "resolve_model",
]

_OPENAI = OpenAIProvider()
_ANTHROPIC = AnthropicProvider()

# Prefix -> (provider, default api_base). OpenAI-compatible servers go by their usual
# prefixes; their api_base defaults to where they listen locally.
_PREFIXES: dict[str, tuple[Provider, str | None]] = {
    "openai": (_OPENAI, None),
    "anthropic": (_ANTHROPIC, None),
    "ollama": (_OPENAI, "http://localhost:11434/v1"),
    "ollama_chat": (_OPENAI, "http://localhost:11434/v1"),
    "lm_studio": (_OPENAI, "http://localhost:1234/v1"),
    "hosted_vllm": (_OPENAI, "http://localhost:8000/v1"),
    "vllm": (_OPENAI, "http://localhost:8000/v1"),
    "azure": (AzureOpenAIProvider(), None),  # bound per deployment by LM (Provider.bind)
    "gemini": (GeminiProvider(), None),  # bound per model by LM
}


def resolve_model(model: str) -> tuple[Provider, str, str]:
    """(provider, model name sent on the wire, default api_base) for ``"prefix/model"``.

    A model string without a known prefix is an OpenAI model (``"gpt-4o-mini"``)."""
    prefix, sep, name = model.partition("/")
    if sep and prefix in _PREFIXES:
        provider, base = _PREFIXES[prefix]
        return provider, name, base or provider.default_base()
    if not sep:
        return _OPENAI, model, _OPENAI.default_api_base
    known = ", ".join(sorted(_PREFIXES))
    raise ValueError(
        f"unknown provider prefix {prefix!r} in model {model!r}; use one of: {known} "
        "(any OpenAI-compatible server works as 'openai/<model>' with api_base=...)"
    )
