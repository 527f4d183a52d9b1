"""LLM handler ``openai_compatible``: any server speaking the OpenAI chat completions API.

Ollama, llama.cpp's ``llama-server``, vLLM, LM Studio or a hosted API (Qwen on Bailian /
DashScope through its compatible mode: ``configs/bailian.yaml``). ``load`` only builds the
client, so start-up works with the server down (``check: true`` asks a hosted API for one
token at start-up instead, so a wrong key stops ``serve`` with one line); a turn that cannot
reach it fails with an error naming the URL, and the next turn tries again. A request the
server drops unanswered on a kept-alive connection goes again at once, on a new one.

A turn never hangs on the server: connecting is bounded by ``connect_timeout_s``, the first
word by ``first_token_timeout_s``, each later silence of the stream by ``timeout_s``. A
stream that is cut, ends before its ``finish_reason`` or cannot be parsed (non-SSE bytes,
invalid JSON) fails the turn with ``LLMServerError``; the engine then says the fallback line.
Nothing here logs or repeats the ``api_key``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from pydantic import Field, field_validator

from avatarchat.engine.handler import (
    HandlerLoadError,
    HandlerOptions,
    register,
    run_blocking,
)
from avatarchat.handlers.llm.base import ChatContext, ChatLLM, Message

log = logging.getLogger(__name__)


class LLMServerError(RuntimeError):
    """The LLM server could not be reached or refused the request; the message says which."""


class OpenAICompatibleOptions(HandlerOptions):
    #: Base URL of the API, up to and including the version path (``…/v1``).
    api_url: str = "http://127.0.0.1:11434/v1"
    #: Local servers ignore it; for hosted APIs write ``${OPENAI_API_KEY}`` in the YAML.
    #: Kept out of the options' repr, so logging them never shows it.
    api_key: str = Field(default="not-needed", repr=False)
    model: str = "default"
    temperature: float = Field(default=0.6, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    max_tokens: int = Field(default=120, ge=1, le=8192)
    #: The longest silence of the server once it has answered (between two chunks).
    timeout_s: float = Field(default=30.0, gt=0.0)
    #: Connecting to the server (TCP and TLS) must take no longer.
    connect_timeout_s: float = Field(default=3.0, gt=0.0)
    #: From sending the request to the reply's first word: past it, the turn says the
    #: fallback line instead of leaving the user in silence.
    first_token_timeout_s: float = Field(default=8.0, gt=0.0)
    #: Retries on connection errors. 0 by default: in a conversation a quick error beats
    #: seconds of silent back-off.
    max_retries: int = Field(default=0, ge=0, le=5)
    #: Extra top-level fields of the request that a server defines beyond OpenAI's
    #: (DashScope: ``enable_thinking: false`` for Qwen3 models, ``enable_search``).
    extra_body: dict[str, Any] = Field(default_factory=dict)
    #: At start-up, ask for one token: a wrong key, model or URL stops ``serve`` with one
    #: line instead of failing every turn. Off by default: a local server may start later.
    check: bool = False

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
        if self.options.check:
            self._check()
        # The openai package imports its chat resources on first use (~35 ms): do it here,
        # not on the event loop in the middle of the first turn.
        self._client.chat.completions  # noqa: B018

    def _check(self) -> None:
        """One token from the configured model (blocking; ``load`` runs in an executor)."""
        o = self.options
        timeout = self._openai.Timeout(o.first_token_timeout_s, connect=o.connect_timeout_s)
        client = self._openai.OpenAI(base_url=o.api_url, api_key=o.api_key, timeout=timeout, max_retries=0)
        try:
            client.chat.completions.create(model=o.model, messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=1, stream=False, extra_body=o.extra_body or None)
        except self._openai.OpenAIError as exc:
            raise HandlerLoadError(f"start-up check failed: {self._explain(exc)}") from None
        finally:
            client.close()

    def _new_client(self) -> Any:
        o = self.options
        timeout = self._openai.Timeout(o.timeout_s, connect=o.connect_timeout_s)
        return self._openai.AsyncOpenAI(base_url=o.api_url, api_key=o.api_key, timeout=timeout, max_retries=o.max_retries)

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
        ``LLMServerError`` naming ``api_url`` (never the key): unreachable, no first word
        within ``first_token_timeout_s``, a cut or unreadable stream, or one that ends
        without a ``finish_reason``.
        """
        if self._client is None:
            raise RuntimeError("the openai_compatible LLM is not loaded")
        o = self.options
        response: Any = None
        chunks: AsyncGenerator[Any, None] | None = None
        try:
            # The first word is awaited here, not across a ``yield``: a timeout must cancel
            # this request, never whatever the consumer does while the generator waits.
            try:
                async with asyncio.timeout(o.first_token_timeout_s):
                    response = await self._request(messages)
                    chunks = aiter(response)
                    text = await self._next_text(ctx, chunks)
            except TimeoutError:
                raise LLMServerError(
                    f"the LLM server at {o.api_url} sent no first token within {o.first_token_timeout_s:g} s"
                ) from None
            while text is not None:
                yield text
                text = await self._next_text(ctx, chunks)
            if ctx.finish_reason is None:
                raise LLMServerError(f"the LLM server at {o.api_url} ended the stream before the reply was finished")
        finally:
            if chunks is not None:
                await chunks.aclose()
            if response is not None:
                await response.close()

    async def _request(self, messages: list[Message]) -> Any:
        """Send the request; the streamed response once its headers are in. Sent once more,
        at once, when the server dropped a kept-alive connection under it (``_dropped``)."""
        o = self.options
        for attempt in (1, 2):
            try:
                client = await self._client_for_this_loop()
                return await client.chat.completions.create(
                    model=o.model,
                    messages=messages,
                    temperature=o.temperature,
                    top_p=o.top_p,
                    max_tokens=o.max_tokens,
                    stream=True,
                    extra_body=o.extra_body or None,
                )
            except self._openai.APIConnectionError as exc:
                if attempt == 2 or isinstance(exc, self._openai.APITimeoutError) or not _dropped(exc):
                    raise self._explain(exc) from exc
                log.info("llm %s: %s closed a kept-alive connection as the request went out; "
                         "sending it again", self.name, o.api_url)
            except self._openai.OpenAIError as exc:
                raise self._explain(exc) from exc
        raise AssertionError("unreachable")

    async def _next_text(self, ctx: ChatContext, chunks: AsyncIterator[Any] | None) -> str | None:
        """The next non-empty text delta of the stream (None at its end); notes the
        ``finish_reason`` in ``ctx``. Any failure to read or parse is an ``LLMServerError``."""
        assert chunks is not None
        try:
            async for chunk in chunks:
                for choice in chunk.choices or ():  # usage-only chunks have no choices
                    if choice.finish_reason:
                        ctx.finish_reason = choice.finish_reason
                    if choice.delta is not None and choice.delta.content:
                        return str(choice.delta.content)
            return None
        except LLMServerError:
            raise
        except self._openai.APIConnectionError as exc:
            # Mid-stream, a connection error is the stream cut off, not a server that is down.
            cause = type(exc.__cause__ or exc).__name__
            raise LLMServerError(f"the stream from the LLM server at {self.options.api_url} broke off ({cause})") from exc
        except Exception as exc:
            raise self._explain(exc) from exc

    def _explain(self, exc: Exception) -> LLMServerError:
        openai, o = self._openai, self.options
        url = o.api_url
        if isinstance(exc, openai.APITimeoutError):
            return LLMServerError(
                f"the LLM server at {url} did not answer in time (connect {o.connect_timeout_s:g} s, "
                f"silence {o.timeout_s:g} s)"
            )
        if isinstance(exc, openai.APIConnectionError):
            return LLMServerError(f"cannot reach the LLM server at {url} ({exc}); is it running?")
        if isinstance(exc, openai.AuthenticationError):
            return LLMServerError(f"the LLM server at {url} rejected the API key (401): set api_key")
        if isinstance(exc, openai.NotFoundError):
            return LLMServerError(f"the LLM server at {url} answered 404: check api_url and model {o.model!r}")
        if isinstance(exc, openai.APIStatusError):
            return LLMServerError(f"the LLM server at {url} answered {exc.status_code}: {exc.message}")
        if isinstance(exc, openai.OpenAIError):
            return LLMServerError(f"the LLM server at {url} failed: {exc}")
        # Bytes that are no SSE, JSON that does not parse or has the wrong shape.
        return LLMServerError(f"the LLM server at {url} sent a stream that cannot be read ({type(exc).__name__})")


#: What the HTTP stack raises when a server closes a pooled connection just as a request
#: goes out on it (llama.cpp's server and Ollama drop idle keep-alive connections after a
#: few seconds): no response came, so the request never reached a model.
_DROPPED_CONNECTION = frozenset({"RemoteProtocolError", "ReadError", "WriteError"})


def _dropped(exc: BaseException) -> bool:
    """Whether ``exc`` (an ``APIConnectionError``) comes from a connection the server closed
    under the request, rather than one that could not be made (a server that is down)."""
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, (ConnectionResetError, BrokenPipeError)) or type(cause).__name__ in _DROPPED_CONNECTION:
            return True
        cause = cause.__cause__
    return False
