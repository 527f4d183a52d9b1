"""``avatarchat bench services``: each service handler's first result against its local
protocol server with a fixed network delay, beside the embedded handler of its stage.

What is timed, per call (rounds alternate between the handlers of a stage, so the machine's
load falls on all of them alike):
- TTS: a reply sentence handed to the stage → its first ``ReplyAudio`` (a voice that listens
  for the final transcript hears it ``LLM_GAP_S`` before, as in a session);
- ASR: the end of an utterance (``SpeechEnded``, no partials before) → its final transcript
  (a recognizer that listens for ``SpeechStarted`` hears it ``SPEAKING_S`` before);
- LLM: a question → the reply's first ``ReplyText``;
- speech to speech: the end of an utterance → the reply's first ``ReplyAudio``, its
  connection opened when the speech started (``SpeechStarted``, 1 s before), as in a
  session; beside it the embedded chain (whisper → local LLM → hibari) in one session.

The servers answer with the embedded voice's speech and canned text (``avatarchat.testing.
services``): the figures are this project's side of the wire plus the delay, not the
services' own speed, which cannot be measured from here.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any

from avatarchat.bench.stats import machine, summarize
from avatarchat.engine.clock import REAL_CLOCK
from avatarchat.engine.events import Event, ReplyAudio, ReplyEnd, ReplyText, SpeechEnded, SpeechStarted, UserTranscript
from avatarchat.engine.handler import Handler, SessionInfo, SessionSettings, handlers_for
from avatarchat.engine.session import Session
from avatarchat.testing.services.base import GOOD_KEY, LocalService, ServiceCase, speech

#: The modules of ``avatarchat.testing.services`` whose ``bench_cases()`` are measured.
SERVICE_MODULES = ("qwen_compatible", "dashscope", "qwen_omni", "edge", "openai_audio")

#: What each stage is asked, by language.
SENTENCE = {"en": "The capital of France is Paris, a city on the Seine.", "zh": "法国的首都是巴黎，它在塞纳河边。"}
QUESTION = {"en": "What is the capital of France?", "zh": "法国的首都是哪里？"}

#: The embedded handler each stage is compared with: (handler, options).
EMBEDDED: dict[str, tuple[str, dict[str, Any]]] = {
    "tts": ("hibari", {}),
    "asr": ("whisper", {"model": "tiny.en"}),
    "llm": ("local", {"max_tokens": 24}),
}

Progress = Callable[[str], None]


def service_cases(only: list[str] | None = None) -> list[ServiceCase]:
    """Every service module's bench cases (those named in ``only``, if given); a module not
    present yet is skipped."""
    cases: list[ServiceCase] = []
    for name in SERVICE_MODULES:
        try:
            module = importlib.import_module(f"avatarchat.testing.services.{name}")
        except ImportError:
            continue
        cases += getattr(module, "bench_cases", lambda: [])()
    return [c for c in cases if not only or c.name in only]


#: How a served config finds each local stand-in: module → the environment it sets (the
#: variables configs/bailian.yaml, qwen_omni.yaml and openai_audio.yaml read).
SERVICE_ENV: dict[str, Callable[[LocalService], dict[str, str]]] = {
    "qwen_compatible": lambda svc: {"DASHSCOPE_HTTP_URL": svc.url},
    "dashscope": lambda svc: {"DASHSCOPE_WS_URL": f"{svc.ws_url}/api-ws/v1/inference"},
    "qwen_omni": lambda svc: {"DASHSCOPE_REALTIME_URL": f"{svc.ws_url}/api-ws/v1/realtime"},
    "openai_audio": lambda svc: {"OPENAI_BASE_URL": f"{svc.url}/v1"},
}


def local_services(stack: ExitStack, delay_ms: float) -> dict[str, str]:
    """Serve every stand-in that has an ``app`` (closed with ``stack``); the environment that
    points a config's ``${...}`` URLs and keys at them."""
    env = {"DASHSCOPE_API_KEY": GOOD_KEY, "OPENAI_API_KEY": GOOD_KEY}
    for name, env_of in SERVICE_ENV.items():
        module = importlib.import_module(f"avatarchat.testing.services.{name}")
        warm = getattr(module, "warm", None)
        if warm is not None:
            warm()  # load the stand-in's voice and recognizer now, not in the first turn
        svc = stack.enter_context(LocalService(module.app, delay_ms=delay_ms))
        env.update(env_of(svc))
    return env


def _build(stage: str, handler: str, options: dict[str, Any], language: str) -> Handler[Any]:
    registered = handlers_for(stage)
    if handler not in registered:
        raise ValueError(f"no {stage} handler named {handler!r} is installed")
    cls = registered[handler]
    built = cls(cls.Options(**options))
    built.use_session(SessionSettings(language=language))
    built.load()
    return built


#: Seconds of "speech" between an s2s stage's ``SpeechStarted`` and the utterance's end.
SPEAKING_S = 1.0
#: Seconds from the final transcript to the reply's first text (a hosted LLM's first token
#: with the network: qwen-compatible's figure here is ~0.13 s, a real one is slower).
LLM_GAP_S = 0.3


async def _first(handler: Handler[Any], events: list[Event], want: Callable[[Event], bool]) -> float:
    """Seconds from handing ``events[0]`` to the stage until it yields an event ``want``
    accepts (while the rest are handed on); the rest of its output is drained."""
    info = SessionInfo("bench-services", SessionSettings(language=handler.session_settings.language))
    ctx = await asyncio.get_running_loop().run_in_executor(None, handler.create_context, info)
    try:
        if handler.stage == "s2s" or SpeechStarted in handler.controls:
            # As in a session: the user starts speaking, the stage gets ready meanwhile
            # (a speech model or a streaming recognizer opens its connection).
            handler.on_control(ctx, SpeechStarted(1))
            await asyncio.sleep(SPEAKING_S)
        if handler.stage == "tts" and UserTranscript in handler.controls:
            # The engine's control lane tells a voice the question is final before the reply
            # starts (a network voice opens its connection then), and the LLM's first token
            # comes some time later.
            handler.on_control(ctx, UserTranscript(1, "?", final=True))
            await asyncio.sleep(LLM_GAP_S)
        took: float | None = None
        t0 = time.monotonic()
        for event in events:
            async for out in handler.handle(ctx, event):
                if took is None and want(out):
                    took = time.monotonic() - t0
        if took is None:
            raise RuntimeError(f"{handler.stage} {handler.name} gave no result")
        return took
    finally:
        handler.close_context(ctx)


def _call(measure: str, language: str) -> tuple[list[Event], Callable[[Event], bool]]:
    """The events one call hands the stage (timed from the first), and what its first
    result is."""
    if measure == "first_audio":
        # From the reply's text: its first clause is said while that text is handled.
        text = SENTENCE[language]
        return [ReplyText(1, text), ReplyEnd(1, text)], lambda e: isinstance(e, ReplyAudio)
    if measure == "first_token":
        question = UserTranscript(1, QUESTION[language])
        return [question], lambda e: isinstance(e, ReplyText) and bool(e.text.strip())
    audio = speech(QUESTION[language], language, 16000)
    end = SpeechEnded(1, audio, speech_end=REAL_CLOCK.now())
    if measure == "first_transcript":
        return [end], lambda e: isinstance(e, UserTranscript) and e.final
    return [end], lambda e: isinstance(e, ReplyAudio)


async def _first_of_chain(handlers: list[Handler[Any]], language: str) -> float:
    """The embedded chain's answer to a spoken question in one session: ``SpeechEnded`` →
    the reply's first ``ReplyAudio`` (what an s2s stage does in one)."""
    info = SessionInfo("bench-services-chain", SessionSettings(language=language))
    (end,), want = _call("first_audio_s2s", language)
    async with Session(handlers, info) as session:
        t0 = time.monotonic()
        session.push(end)
        async for event in session.events():
            if want(event):
                took = time.monotonic() - t0
                break
        session.cancel_turn(end.turn)
    return took


async def bench_services(rounds: int, delay_ms: float, only: list[str] | None, progress: Progress) -> dict[str, Any]:
    """Time every case ``rounds`` times against its server (``delay_ms`` each way) and the
    embedded handler of each stage measured (without a network) in the same rounds."""
    cases = service_cases(only)
    if not cases:
        raise ValueError("no service cases to measure" + (f" named {', '.join(only)}" if only else ""))
    loop = asyncio.get_running_loop()
    runs: list[tuple[str, str, str, Callable[[], Awaitable[float]]]] = []  # name, stage, measure, one call
    embedded: dict[str, Handler[Any]] = {}

    async def built(stage: str, language: str) -> Handler[Any]:
        if stage not in embedded:
            name, options = EMBEDDED[stage]
            progress(f"loading the embedded {stage} ({name}) …")
            if stage == "asr" and language != "en":
                options = {"model": "base", "language": language}
            embedded[stage] = await loop.run_in_executor(None, _build, stage, name, options, language)
        return embedded[stage]

    def timed(handler: Handler[Any], measure: str, language: str) -> Callable[[], Awaitable[float]]:
        return lambda: _first(handler, *_call(measure, language))

    with ExitStack() as stack:
        for case in cases:
            progress(f"starting {case.name}'s local server and loading its handler …")
            svc = stack.enter_context(LocalService(case.server, delay_ms=delay_ms))
            handler = await loop.run_in_executor(None, _build, case.stage, case.handler, case.options(svc),
                                                 case.language)
            runs.append((case.name, case.stage, case.measure, timed(handler, case.measure, case.language)))
        for stage in sorted({c.stage for c in cases}):
            language = next(c.language for c in cases if c.stage == stage)
            if stage in EMBEDDED:
                measure = {"tts": "first_audio", "asr": "first_transcript", "llm": "first_token"}[stage]
                handler = await built(stage, language)
                runs.append((f"embedded-{EMBEDDED[stage][0]}", stage, measure, timed(handler, measure, language)))
            elif stage == "s2s":
                chain = [await built(s, language) for s in ("asr", "llm", "tts")]
                runs.append(("embedded-chain", stage, "first_audio_s2s", functools.partial(_first_of_chain, chain, language)))
        times: dict[str, list[float]] = {name: [] for name, *_ in runs}
        for r in range(rounds):
            for name, _stage, _measure, call in runs:
                times[name].append(await call() * 1000)
            progress(f"round {r + 1}/{rounds} done")
    return {
        "bench": "services",
        "delay_ms_each_way": delay_ms,
        "rounds": rounds,
        "machine": machine(),
        "results": {name: {"stage": stage, "measure": measure, "ms": summarize(times[name])}
                    for name, stage, measure, _ in runs},
    }
