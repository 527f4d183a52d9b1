"""LLM handler ``openai_compatible``: any server speaking the OpenAI chat completions API.

Ollama, llama.cpp's ``llama-server``, vLLM, LM Studio or a hosted API. ``load`` only builds
the client, so start-up works with the server down; a turn that cannot reach it fails with
an error naming the URL, and the next turn tries again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from pydantic import Field, field_validator

from avatarchat.engine.handler import (
    HandlerLoadError,
    HandlerOptions,
    register,
    run_blocking,
)
from avatarchat.handlers.llm.base import ChatContext, ChatLLM, Message


class LLMServerError(RuntimeError):
    """The LLM server could not be reached or refused the request; the message says which."""


class OpenAICompatibleOptions(HandlerOptions):
    #: Base URL of the API, up to and including the version path (``…/v1``).
    api_url: str = "http://127.0.0.1:11434/v1"
    #: Local servers ignore it; for hosted APIs write ``${OPENAI_API_KEY}`` in the YAML.
    api_key: str = "not-needed"
    model: str = "default"
    temperature: float = Field(default=0.6, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    max_tokens: int = Field(default=120, ge=1, le=8192)
    timeout_s: float = Field(default=30.0, gt=0.0)
    #: Retries on connection errors. 0 by default: in a conversation a quick error beats
    #: seconds of silent back-off.
    max_retries: int = Field(default=0, ge=0, le=5)

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"api_url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")


@register
class OpenAICompatibleLLM(ChatLLM[OpenAICompatibleOptions]):
    """Streams from a remote chat completions endpoint. One client serves every session."""

    name = "openai_compatible"
    Options = OpenAICompatibleOptions

    def __init__(self, options: OpenAICompatibleOptions) -> None:
        super().__init__(options)
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._openai: Any = None  # the module, imported in load()

    def load(self) -> None:
        """Create the client. Contacts nothing: the server may come up later."""
        try:
            import openai
        except ImportError as exc:
            raise HandlerLoadError("the openai_compatible LLM needs the openai package: pip install openai") from exc
        self._openai = openai
        self._client = self._new_client()
        # The openai package imports its chat resources on first use (~35 ms): do it here,
        # not on the event loop in the middle of the first turn.
        self._client.chat.completions  # noqa: B018

    def _new_client(self) -> Any:
        o = self.options
        return self._openai.AsyncOpenAI(
            base_url=o.api_url, api_key=o.api_key, timeout=o.timeout_s, max_retries=o.max_retries
        )

    async def _client_for_this_loop(self) -> Any:
        # The client's connection pool belongs to the loop that first used it; a handler
        # loaded once may serve a later loop (tests, a restarted server), where the stale
        # pool fails with "Event loop is closed". One client per loop avoids that. Building
        # one loads TLS certificates (~30 ms), so it happens in an executor.
        loop = asyncio.get_running_loop()
        if self._client_loop is not loop:
            if self._client_loop is not None:
                self._client = await run_blocking(self._new_client)
            self._client_loop = loop
        return self._client

    async def stream(self, ctx: ChatContext, messages: list[Message]) -> AsyncGenerator[str, None]:
        """Stream the reply; closing or cancelling this generator closes the HTTP response.

        Closing the response is how the server learns to stop generating. Failures raise
        ``LLMServerError`` naming ``api_url``.
        """
        if self._client is None:
            raise RuntimeError("the openai_compatible LLM is not loaded")
        o = self.options
        try:
            response = await (await self._client_for_this_loop()).chat.completions.create(
                model=o.model,
                messages=messages,
                temperature=o.temperature,
                top_p=o.top_p,
                max_tokens=o.max_tokens,
                stream=True,
            )
        except self._openai.OpenAIError as exc:
            raise self._explain(exc) from exc
        try:
            async for chunk in response:
                for choice in chunk.choices or ():  # usage-only chunks have no choices
                    if choice.finish_reason:
                        ctx.finish_reason = choice.finish_reason
                    if choice.delta is not None and choice.delta.content:
                        yield choice.delta.content
        except self._openai.OpenAIError as exc:
            raise self._explain(exc) from exc
        finally:
            await response.close()

    def _explain(self, exc: Exception) -> LLMServerError:
        openai, url = self._openai, self.options.api_url
        if isinstance(exc, openai.APITimeoutError):
            return LLMServerError(f"the LLM server at {url} did not answer within {self.options.timeout_s:g} s")
        if isinstance(exc, openai.APIConnectionError):
            return LLMServerError(f"cannot reach the LLM server at {url} ({exc}); is it running?")
        if isinstance(exc, openai.AuthenticationError):
            return LLMServerError(f"the LLM server at {url} rejected the API key (401): set api_key")
        if isinstance(exc, openai.NotFoundError):
            model = self.options.model
            return LLMServerError(f"the LLM server at {url} answered 404: check api_url and model {model!r}")
        if isinstance(exc, openai.APIStatusError):
            return LLMServerError(f"the LLM server at {url} answered {exc.status_code}: {exc.message}")
        return LLMServerError(f"the LLM server at {url} failed: {exc}")
