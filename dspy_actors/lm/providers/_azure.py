"""Azure OpenAI: OpenAI's chat completions at a deployment of an Azure resource.

``LM("azure/<deployment>", api_base="https://<resource>.openai.azure.com",
api_version="2024-10-21", api_key=...)``, as DSPy (through LiteLLM) takes it; ``api_base``,
``api_version`` and the key may also come from ``AZURE_API_BASE``, ``AZURE_API_VERSION`` and
``AZURE_API_KEY``. Requests go to ``{api_base}/openai/deployments/<deployment>/chat/
completions?api-version=<version>`` with the key in an ``api-key`` header; bodies, streams,
usage and errors are OpenAI's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from dspy_actors.lm.providers._openai import OpenAIProvider

__all__ = ["DEFAULT_API_VERSION", "AzureOpenAIProvider"]

DEFAULT_API_VERSION = "2024-10-21"  # the latest GA data-plane version when written


class AzureOpenAIProvider(OpenAIProvider):
    name = "azure"
    default_api_base = ""
    endpoint_options = ("api_version",)
    api_key_env = "AZURE_API_KEY"

    def __init__(self, deployment: str = "", api_version: str = DEFAULT_API_VERSION) -> None:
        self.deployment = deployment
        self.api_version = api_version

    def default_base(self) -> str:
        return os.environ.get("AZURE_API_BASE", "")

    def bind(self, model: str, api_base: str, options: Mapping[str, Any]) -> AzureOpenAIProvider:
        if not api_base:
            raise ValueError(
                f"azure/{model}: no api_base; pass api_base='https://<resource>.openai.azure.com' "
                "or set AZURE_API_BASE"
            )
        if not model:
            raise ValueError("an Azure model is 'azure/<deployment name>'")
        version = options.get("api_version") or os.environ.get("AZURE_API_VERSION")
        return AzureOpenAIProvider(model, str(version or DEFAULT_API_VERSION))

    def endpoint(self, api_base: str) -> str:
        deployment = quote(self.deployment, safe="")
        return (
            f"{api_base}/openai/deployments/{deployment}/chat/completions"
            f"?api-version={quote(self.api_version, safe='')}"
        )

    def headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            headers["api-key"] = api_key
        return headers

    def build_body(
        self,
        model: str,
        messages: list[dict[str, Any]],
        params: Mapping[str, Any],
        response_format: Mapping[str, Any] | None,
        stream: bool,
    ) -> dict[str, Any]:
        # api_version goes in the URL; the deployment picks the model (the field is ignored).
        sendable = {k: v for k, v in params.items() if k != "api_version"}
        return super().build_body(model, messages, sendable, response_format, stream)
