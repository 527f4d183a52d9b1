"""The handler contract and the registry of handlers by stage and name.

A handler is one stage of the pipeline (VAD, ASR, LLM, TTS, avatar; or a speech-to-speech
model, ``s2s``, in place of ASR + LLM + TTS). Its life:

1. ``use_session(settings)`` once, before ``load``: the config's ``session:`` section (the
   persona a local LLM warms its cache with). Default: kept as ``self.session_settings``.
2. ``load()`` once per process, in an executor: load the shared models. Raise
   ``HandlerLoadError`` (or anything) to stop start-up with a clear message.
3. ``create_context(session)`` per session, in an executor: the per-session state
   (history, buffers, a small stateful model). ``session.clock`` is the only clock it reads.
4. ``handle(ctx, event)`` for each event whose type is in ``accepts``: an async generator
   of output events. Events not accepted pass on untouched; accepted ones pass on only if
   their type is also in ``forwards``. Blocking model calls go to ``run_blocking``. The engine
   may cancel the generator at any ``await`` when the turn is interrupted.
5. ``on_control(ctx, event)`` for each control event whose type is in ``controls`` (an
   interruption, an end-of-turn hint, a cut reply): delivered by the engine's control lane
   from the stage's own task, ahead of queued data, even while ``handle`` is busy. Sync and
   quick; what it returns leaves the stage like ``handle``'s output.
6. ``cancel_turn(ctx, turn)`` drops whatever the context buffers for that turn.
7. ``close_context(ctx)`` when the session ends.

Capabilities a transport needs are declared here, not found by ``hasattr``: an avatar
handler (``AvatarHandler``) states its ``fps`` and renders ``idle_frame``s; a voice handler
(``VoiceHandler``: a TTS, or a speech-to-speech model) states its output ``sample_rate``.

Register a handler with ``@register`` and name it in the YAML config. Built-in handlers and
third-party ones are found the same way: through the ``avatarchat.handlers`` entry points.
"""

from __future__ import annotations

import asyncio
import functools
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

import numpy as np

from pydantic import BaseModel, ConfigDict, Field

from avatarchat.engine.clock import REAL_CLOCK, Clock
from avatarchat.engine.events import NO_TURN, Event

STAGES = ("vad", "asr", "turn", "s2s", "llm", "tts", "avatar")
#: Stages a config may leave out (no avatar: a voice-only pipeline; no ``turn``: the end of
#: a turn is judged from the words alone). The ``turn`` stage hears each pause from the ASR,
#: which passes the ``SpeechPaused`` on before transcribing it where it leaves a core free
#: (whisper's ``turn_beside``), else after, so the two never compete for one core.
OPTIONAL_STAGES = frozenset({"turn", "avatar"})
#: A speech-to-speech model (``s2s``: the user's audio in, reply text and speech out) takes
#: the place of these three stages: a config has either ``s2s`` or all of them.
S2S_REPLACES = ("asr", "llm", "tts")


class HandlerOptions(BaseModel):
    """Base of every handler's options: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class HandlerLoadError(RuntimeError):
    """A handler could not load its models; the message says what to do."""


class BargeInSettings(HandlerOptions):
    """``session.barge_in``: when the user's voice takes the floor from the avatar."""

    enabled: bool = True
    #: Speech this long (from its onset) stops the reply; shorter speech only ducks it,
    #: unless its transcript has words.
    min_speech_ms: int = Field(default=300, ge=0, le=5000)
    #: The reply's volume while speech is being weighed (0..1).
    duck_volume: float = Field(default=0.2, ge=0.0, le=1.0)


class EndOfTurnSettings(HandlerOptions):
    """``session.end_of_turn``: the silence that ends a turn, judged from its words.

    After a pause, the early transcript decides: ``complete_ms`` of silence when it ends a
    sentence, ``unfinished_ms`` when it stops mid-sentence ("and", "the", a comma). 0 keeps
    the VAD's own ``end_ms`` for that case."""

    complete_ms: int = Field(default=0, ge=0, le=10000)
    unfinished_ms: int = Field(default=0, ge=0, le=10000)
    #: With an audio end-of-turn model (a ``turn`` stage): the silence when the words and
    #: the voice disagree (a full stop Whisper put after a phrase spoken mid-sentence).
    doubtful_ms: int = Field(default=0, ge=0, le=10000)
    #: The audio model's probability at or above which the voice says "finished".
    audio_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    #: After the user goes on past a pause that sounded finished (and so ended, or would
    #: have ended, their turn), later pauses that sound finished wait that pause plus this
    #: margin, at most ``unfinished_ms``, until a few such pauses pass with no comeback
    #: (``engine.patience``). 0: never.
    patience_margin_ms: int = Field(default=0, ge=0, le=5000)
    #: Start the reply (LLM, voice, avatar) on the pause's transcript before the turn is
    #: decided; it is played if the turn ends with those words, dropped unheard if not.
    speculate: bool = False


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
    barge_in: BargeInSettings = Field(default_factory=lambda: BargeInSettings())
    end_of_turn: EndOfTurnSettings = Field(default_factory=lambda: EndOfTurnSettings())

    def fallback_for(self, stage: str) -> str:
        """The line said (or, past the voice, shown) when ``stage`` fails on a turn."""
        if stage in ("vad", "asr"):
            return self.asr_fallback_reply
        if stage in ("llm", "s2s"):  # after an s2s, with no voice left, it is only shown
            return self.fallback_reply
        return self.voice_fallback_reply


@dataclass
class SessionInfo:
    """What a handler may know about its session."""

    session_id: str
    settings: SessionSettings = field(default_factory=SessionSettings)
    #: Allocates a new turn id (set by the session; the VAD calls it when speech starts).
    new_turn: Callable[[], int] = field(default=lambda: NO_TURN, repr=False)
    #: The session's one clock: every time a handler reads or stamps comes from it.
    clock: Clock = field(default=REAL_CLOCK, repr=False)
    #: What the avatar stage sends: rendered ``frames`` (``AvatarFrame``, video), or the
    #: face's ``params`` per frame (``AvatarPose``) for a client that draws the avatar.
    avatar_output: Literal["frames", "params"] = "frames"


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
    #: Control events delivered to ``on_control`` by the engine's control lane.
    controls: ClassVar[tuple[type[Event], ...]] = ()

    def __init__(self, options: OptionsT) -> None:
        self.options = options
        self.session_settings = SessionSettings()

    def use_session(self, settings: SessionSettings) -> None:
        """The config's ``session:`` section, given once before ``load``."""
        self.session_settings = settings

    def load(self) -> None:
        """Load shared models (blocking; the engine runs it in an executor)."""

    def models(self) -> list[Any]:
        """The model files this handler uses (``avatarchat.models.ModelFile``), for `avatarchat models`."""
        return []

    def create_context(self, session: SessionInfo) -> Any:
        return None

    @abstractmethod
    def handle(self, ctx: Any, event: Event) -> AsyncIterator[Event]:
        """Turn one accepted event into zero or more output events."""

    def on_control(self, ctx: Any, event: Event) -> list[Event]:
        """React to a control event of a type in ``controls`` (sync, quick, on the loop);
        returns the events this stage emits because of it."""
        return []

    def cancel_turn(self, ctx: Any, turn: int) -> None:
        """Forget anything buffered for ``turn``."""

    def close_context(self, ctx: Any) -> None:
        """Release per-session resources."""


class AvatarHandler(Handler[OptionsT]):
    """An avatar stage: what a transport needs of it between replies."""

    stage: ClassVar[str] = "avatar"

    @property
    @abstractmethod
    def fps(self) -> int:
        """Frames per second of the avatar's video (reply and idle)."""

    @abstractmethod
    def idle_frame(self, ctx: Any, t: float) -> np.ndarray:
        """Blocking (run it in an executor): the face between replies at time ``t`` of the
        session's clock, as ``[H, W, 3]`` uint8 RGB. Safe from any thread."""

    #: The names of an ``AvatarPose``'s values (empty: the handler makes no poses).
    pose_names: ClassVar[tuple[str, ...]] = ()

    def idle_pose(self, ctx: Any, t: float) -> tuple[float, ...] | None:
        """Cheap, any thread: the face's parameters (``pose_names`` order) between replies
        at time ``t`` of the session's clock; None if the handler makes no poses."""
        return None

    def client_assets(self) -> tuple[dict[str, Any], bytes] | None:
        """What a page needs to draw this avatar from its poses: a JSON-able rig document
        and the portrait as PNG (computed once); None if it cannot be drawn by a page."""
        return None


class VoiceHandler(Handler[OptionsT]):
    """A stage that speaks the reply (``ReplyAudio``): what a transport needs of it before
    any reply."""

    #: The rate of every ``ReplyAudio`` it emits (a WebSocket client is told it up front).
    sample_rate: ClassVar[int]


class TTSHandler(VoiceHandler[OptionsT]):
    """A voice stage: reply text in, reply speech out."""

    stage: ClassVar[str] = "tts"


class S2SHandler(VoiceHandler[OptionsT]):
    """A speech-to-speech stage (``s2s``), in place of ASR + LLM + TTS: the user's utterance
    (``SpeechEnded``) or typed words (a final ``UserTranscript``) in; out, per turn, the
    model's transcript of the user (``UserTranscript``), the reply as ``ReplyText`` deltas
    and ``ReplyAudio`` (contiguous offsets, at ``sample_rate``; a chunk's ``text`` claims
    only words said by its end), the timing marks the metrics use (``llm_start``,
    ``llm_first_token``, ``tts_first_audio``), then ``ReplyEnd``. It answers one turn at a
    time; a cut reply (``ReplyInterrupted``) and ``cancel_turn`` stop the model's response."""

    stage: ClassVar[str] = "s2s"


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
    # Built-in and third-party handlers alike are entry points of group
    # "avatarchat.handlers" (see pyproject.toml); loading one runs its @register.
    from importlib.metadata import entry_points

    for ep in entry_points(group="avatarchat.handlers"):
        ep.load()
