"""What the ``openai`` TTS and ASR handlers share: the options every OpenAI audio endpoint
takes, one ``openai`` client per event loop, and errors turned into one line a user can act on.

Both talk to any server of OpenAI's audio API (OpenAI itself, Kokoro-FastAPI, vLLM,
LocalAI, faster-whisper servers…) through the official ``openai`` client pointed at
``base_url``. Nothing here logs or repeats the API key.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from avatarchat.engine.handler import HandlerLoadError, HandlerOptions, run_blocking

OPENAI_URL = "https://api.openai.com/v1"
KEY_VARIABLE = "OPENAI_API_KEY"
#: Sent to a server other than OpenAI's when no key is configured: local servers take any.
NO_KEY = "not-needed"


class ServiceError(RuntimeError):
    """An OpenAI audio server failed a request; the message says which server and why."""


class OpenAIAudioOptions(HandlerOptions):
    """Options of every handler that talks to an OpenAI audio endpoint."""

    #: Base URL of the API, up to and including the version path. Alternatives: a local
    #: Kokoro-FastAPI (``http://127.0.0.1:8880/v1``), vLLM or LocalAI (``http://HOST:8000/v1``),
    #: a faster-whisper server (``http://HOST:8000/v1``), a proxy.
    base_url: str = OPENAI_URL
    #: "" means ``$OPENAI_API_KEY``. A server other than OpenAI's may need none.
    api_key: str = Field(default="", repr=False)
    #: Connecting (TCP and TLS) must take no longer.
    connect_timeout_s: float = Field(default=5.0, gt=0.0)
    #: ``load`` makes one cheap call so that ``serve`` never starts half working.
    check: bool = True
    #: Retries on connection errors: 0, as in a conversation a quick error beats back-off.
    max_retries: int = Field(default=0, ge=0, le=5)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")


def api_key_for(options: OpenAIAudioOptions) -> str:
    """The key to send: the option, else ``$OPENAI_API_KEY``, else (a server other than
    OpenAI's) a placeholder. OpenAI's own API without a key is a ``HandlerLoadError``."""
    key = options.api_key or os.environ.get(KEY_VARIABLE, "")
    if key:
        return key
    if urlsplit(options.base_url).hostname == urlsplit(OPENAI_URL).hostname:
        raise HandlerLoadError(f"no OpenAI API key: set {KEY_VARIABLE} (or api_key in the config) "
                               "to a key from https://platform.openai.com/api-keys")
    return NO_KEY


class ClientPerLoop:
    """The ``openai`` clients of one handler: a sync one for ``load``'s check, and an async
    one per event loop (its connection pool belongs to the loop that first used it; a handler
    loaded once may serve a later loop, where a stale pool fails with "Event loop is closed")."""

    def __init__(self, options: OpenAIAudioOptions, read_timeout_s: float) -> None:
        try:
            import openai
        except ImportError as exc:  # a dependency, but a trimmed install may lack it
            raise HandlerLoadError("the openai audio handlers need the openai package: pip install openai") from exc
        self.openai: Any = openai
        self._options = options
        self._key = api_key_for(options)
        self._timeout = openai.Timeout(read_timeout_s, connect=options.connect_timeout_s)
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def sync(self) -> Any:
        """A blocking client (for ``load``); the caller closes it."""
        o = self._options
        return self.openai.OpenAI(base_url=o.base_url, api_key=self._key, timeout=self._timeout, max_retries=o.max_retries)

    def _new_async(self) -> Any:
        o = self._options
        return self.openai.AsyncOpenAI(base_url=o.base_url, api_key=self._key, timeout=self._timeout,
                                       max_retries=o.max_retries)

    async def for_this_loop(self) -> Any:
        """The async client of the running loop; building one loads TLS certificates
        (~30 ms), so that happens in an executor."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._client = await run_blocking(self._new_async)
            self._loop = loop
        return self._client


#: httpx's errors for a connection the server closed mid-exchange (not one never made).
_CUT = frozenset({"RemoteProtocolError", "ReadError"})


def explain(openai: Any, exc: BaseException, what: str, url: str, model: str, hint_404: str = "") -> str:
    """One line for a user: ``what`` (e.g. "the speech server") at ``url`` failed, and why."""
    if isinstance(exc, openai.APITimeoutError):
        return f"{what} at {url} did not answer in time"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc
        if type(cause).__name__ in _CUT:  # it was reached, then closed the connection
            return f"the connection to {what} at {url} broke off before its answer ({type(cause).__name__}: {cause})"
        return f"cannot reach {what} at {url}: {type(cause).__name__}: {cause}"
    if isinstance(exc, openai.AuthenticationError):
        return (f"{what} at {url} rejected the API key (401): set {KEY_VARIABLE} (or api_key) "
                "to a valid key")
    if isinstance(exc, openai.PermissionDeniedError):
        return f"{what} at {url} refused the request (403): {_message(exc)}"
    if isinstance(exc, openai.NotFoundError):
        return f"{what} at {url} answered 404 ({_message(exc)}): check base_url and model {model!r}{hint_404}"
    if isinstance(exc, openai.APIStatusError):
        return f"{what} at {url} answered {exc.status_code}: {_message(exc)}"
    return f"{what} at {url} failed: {type(exc).__name__}: {exc}"


def _message(exc: Any) -> str:
    """The error object's message (``{"error": {"message": ...}}``), else the client's."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])[:300]
    return str(getattr(exc, "message", exc))[:300]
