"""The handler contract and the registry of handlers by stage and name.

A handler is one stage of the pipeline (VAD, ASR, LLM, TTS, avatar). Its life:

1. ``load()`` once per process, in an executor: load the shared models. Raise
   ``HandlerLoadError`` (or anything) to stop start-up with a clear message.
2. ``observe_session(session)`` (optional) per session, when the pipeline opens it, before
   it starts: attach ``Session.observe`` watchers that work across stages (the silero VAD
   attaches ``engine.endofturn``, which reads the ASR's transcripts and hints the VAD).
   The handler whose options turn such a feature on attaches it: the engine reads no
   handler's options.
3. ``create_context(session)`` per session, in an executor: the per-session state
   (history, buffers, a small stateful model).
4. ``handle(ctx, event)`` for each event whose type is in ``accepts``: an async generator
   of output events. Events not accepted pass on untouched; accepted ones pass on only if
   their type is also in ``forwards``. Blocking model calls go to ``run_blocking``. The engine may cancel
   the generator at any ``await`` when the turn is interrupted.
5. ``cancel_turn(ctx, turn)`` drops whatever the context buffers for that turn.
6. ``close_context(ctx)`` when the session ends.

Register a handler with ``@register`` and it can be named in the YAML config.
"""

from __future__ import annotations

import asyncio
import functools
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from avatarchat.engine.events import NO_TURN, Event

if TYPE_CHECKING:  # the session module imports this one
    from avatarchat.engine.session import Session

STAGES = ("vad", "asr", "llm", "tts", "avatar")
#: Stages a config may leave out (no avatar: a voice-only pipeline).
OPTIONAL_STAGES = frozenset({"avatar"})


class HandlerOptions(BaseModel):
    """Base of every handler's options: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class HandlerLoadError(RuntimeError):
    """A handler could not load its models; the message says what to do."""


class SessionSettings(HandlerOptions):
    """The ``session:`` section of the config, shared by every handler of a session."""

    # Measured on SmolLM2-135M: a plain assistant persona gets more facts right than a
    # chatty "digital human" one, which drifted into French for questions about France.
    system_prompt: str = "You are a helpful AI assistant named Ava. Keep your answers short."
    #: How many earlier exchanges (user + reply) the LLM sees.
    history_turns: int = Field(default=2, ge=0, le=50)
    language: str = "en"
    # What the avatar says when a stage fails on a turn (the engine's error path says it
    # as a reply of its own; "" says nothing). Never part of the LLM's history.
    #: When the language model fails (server down, slow, stream cut, garbage).
    fallback_reply: str = Field(default="I can't reach my language model right now.", max_length=300)
    #: When the VAD or the speech recognition fails on the end of an utterance.
    asr_fallback_reply: str = Field(default="Sorry, I didn't catch that.", max_length=300)
    #: When the voice or the avatar fails: shown only, since the voice is what failed.
    voice_fallback_reply: str = Field(default="Sorry, I lost my voice for a moment.", max_length=300)

    def fallback_for(self, stage: str) -> str:
        """The line said (or, past the voice, shown) when ``stage`` fails on a turn."""
        if stage in ("vad", "asr"):
            return self.asr_fallback_reply
        if stage == "llm":
            return self.fallback_reply
        return self.voice_fallback_reply


@dataclass
class SessionInfo:
    """What a handler may know about its session."""

    session_id: str
    settings: SessionSettings = field(default_factory=SessionSettings)
    #: Allocates a new turn id (set by the session; the VAD calls it when speech starts).
    new_turn: Callable[[], int] = field(default=lambda: NO_TURN, repr=False)


OptionsT = TypeVar("OptionsT", bound=HandlerOptions)
T = TypeVar("T")


class Handler(ABC, Generic[OptionsT]):
    """One stage. Subclasses set ``name``, ``stage``, ``Options`` and ``accepts``."""

    name: ClassVar[str]
    stage: ClassVar[str]
    Options: ClassVar[type[HandlerOptions]] = HandlerOptions
    accepts: ClassVar[tuple[type[Event], ...]] = ()
    #: Accepted events that are also passed on, before handling (the transcript the LLM
    #: answers, the reply text the TTS speaks: the client shows both).
    forwards: ClassVar[tuple[type[Event], ...]] = ()

    def __init__(self, options: OptionsT) -> None:
        self.options = options

    def load(self) -> None:
        """Load shared models (blocking; the engine runs it in an executor)."""

    def models(self) -> list[Any]:
        """The model files this handler uses (``avatarchat.models.ModelFile``), for `avatarchat models`."""
        return []

    def observe_session(self, session: Session) -> None:
        """Attach this handler's cross-stage watchers to a new, not yet started session
        (``session.observe``); they live as long as the session. Default: none."""

    def create_context(self, session: SessionInfo) -> Any:
        return None

    @abstractmethod
    def handle(self, ctx: Any, event: Event) -> AsyncIterator[Event]:
        """Turn one accepted event into zero or more output events."""

    def cancel_turn(self, ctx: Any, turn: int) -> None:
        """Forget anything buffered for ``turn``."""

    def close_context(self, ctx: Any) -> None:
        """Release per-session resources."""


async def run_blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking model call in the default executor so the event loop never stalls."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))


_REGISTRY: dict[str, dict[str, type[Handler[Any]]]] = {stage: {} for stage in STAGES}

H = TypeVar("H", bound=type[Handler[Any]])


def register(cls: H) -> H:
    """Class decorator: make ``cls`` available as ``handler: <cls.name>`` in its stage."""
    if cls.stage not in _REGISTRY:
        raise ValueError(f"unknown stage {cls.stage!r}; stages are {', '.join(STAGES)}")
    _REGISTRY[cls.stage][cls.name] = cls
    return cls


def handlers_for(stage: str) -> dict[str, type[Handler[Any]]]:
    """Registered handlers of ``stage``, loading the built-in ones and entry points first."""
    _load_builtin_handlers()
    return dict(_REGISTRY[stage])


@functools.cache
def _load_builtin_handlers() -> None:
    # Importing the modules runs their @register; model imports inside them are lazy.
    import importlib
    from importlib.metadata import entry_points

    for module in BUILTIN_HANDLER_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group="avatarchat.handlers"):
        ep.load()


BUILTIN_HANDLER_MODULES = (
    "avatarchat.handlers.vad.silero",
    "avatarchat.handlers.asr.whisper",
    "avatarchat.handlers.llm.local",
    "avatarchat.handlers.llm.openai_compatible",
    "avatarchat.handlers.tts.hibari",
    "avatarchat.handlers.tts.espeak",
    "avatarchat.handlers.avatar.portrait",
)
