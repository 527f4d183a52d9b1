"""Typed events: everything that flows through a session's pipeline.

Events flow one way, from the first stage (VAD) to the last (TTS, later the avatar) and out
to the session's consumer. A stage transforms the events it ``accepts`` and passes every
other event on untouched, so a new stage never needs to know about events it does not use.

Every event of a user turn and its reply carries the turn id. Audio that belongs to no
turn yet (raw microphone input) has ``turn = NO_TURN``.

Some events are also *control* events (``CONTROL``): the moment a stage emits one, the
engine's control lane hands it to every stage that reacts to it and to the engine's own
listeners (turn-taking, end of turn), ahead of whatever data is queued, while it also
travels down the pipeline in order. ``EndOfTurnHint`` and ``ReplyInterrupted`` are made by
the engine and travel only the lane (``ReplyInterrupted`` also comes out to the transport).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import numpy as np

NO_TURN = -1


def now() -> float:
    """The one clock of the engine (monotonic seconds) used by every timing mark."""
    return time.monotonic()


@dataclass(frozen=True, slots=True)
class Event:
    turn: int


# --- user side -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserAudio(Event):
    """A chunk of microphone audio: mono float32 in [-1, 1] at ``sample_rate``."""

    samples: np.ndarray
    sample_rate: int


@dataclass(frozen=True, slots=True)
class SpeechStarted(Event):
    """The VAD heard the user start speaking; ``turn`` is the new turn."""

    at: float = field(default_factory=now)


@dataclass(frozen=True, slots=True)
class SpeechPaused(Event):
    """The user went quiet, but not yet for long enough to end the turn: the utterance so
    far, so the ASR can transcribe it while the VAD waits out its hangover. If the user goes
    on, a later pause or the end carries a later ``speech_end``."""

    audio: np.ndarray
    speech_end: float


@dataclass(frozen=True, slots=True)
class EndOfTurnHint(Event):
    """How long the silence after ``speech_end`` must last before ``turn`` ends, judged from
    its early transcript (a complete question: short; a trailing "and", "the" or comma:
    long). The engine's end of turn puts it on the control lane for the VAD, which ignores
    it once the user has spoken again (``speech_end`` no longer matches)."""

    speech_end: float
    silence_ms: int


@dataclass(frozen=True, slots=True)
class EndOfTurnGuess(Event):
    """An audio end-of-turn model's judgement of the pause after ``speech_end`` (the
    ``turn`` stage, e.g. Smart Turn): ``complete`` is its probability (0..1) that the user
    has finished, from how the speech sounded (pitch, pace, a trailing word), in any
    language. End of turn weighs it with the early transcript's words."""

    speech_end: float
    complete: float


@dataclass(frozen=True, slots=True)
class SpeechOngoing(Event):
    """The user is still speaking: voiced audio of ``turn`` was captured up to
    ``voiced_until`` (engine clock). The VAD sends one every ~64 ms of voiced speech after
    ``SpeechStarted`` (none during pauses), so turn-taking can tell speech that goes on
    from a cough or a click without waiting for the end of the turn. No stage acts on it."""

    voiced_until: float


@dataclass(frozen=True, slots=True)
class SpeechSoFar(Event):
    """The user is still speaking: the utterance so far (16 kHz mono, with pre-roll), sent
    every ``partial_ms`` of speech so the ASR can show a growing transcript. Nothing waits
    on its answer; an ASR may skip one that a newer one has overtaken."""

    audio: np.ndarray
    voiced_until: float


@dataclass(frozen=True, slots=True)
class SpeechEnded(Event):
    """The user stopped: the whole utterance (with pre-roll) at 16 kHz mono.

    ``speech_end`` is when the last voiced audio was heard, ``at`` when the VAD decided;
    the difference is the hangover.
    """

    audio: np.ndarray
    speech_end: float
    at: float = field(default_factory=now)


@dataclass(frozen=True, slots=True)
class UserTranscript(Event):
    """What the user said. ``final=False``: a partial, from speech so far or from a pause;
    one made at a pause carries that pause's ``speech_end`` (end of turn judges it)."""

    text: str
    final: bool = True
    speech_end: float | None = None


# --- reply side ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplyText(Event):
    """A delta of the reply text as the LLM streams it."""

    text: str


@dataclass(frozen=True, slots=True)
class PhonemeTiming:
    """One phoneme of the reply audio; times are seconds from the chunk's first sample."""

    phoneme: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class ReplyAudio(Event):
    """A chunk of reply speech with the text it says and its phoneme timings.

    ``offset`` is where the chunk starts on the reply's own timeline (seconds from the
    first sample of the reply): the single clock that audio and video share downstream.
    """

    samples: np.ndarray
    sample_rate: int
    offset: float
    text: str
    phonemes: tuple[PhonemeTiming, ...] = ()

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True, slots=True)
class ReplyEnd(Event):
    """The reply of ``turn`` is complete. Each stage flushes what it holds, then passes it on.

    ``truncated``: the LLM stopped at its token cap, so the text may end mid-sentence. The
    TTS then leaves an unfinished last sentence unsaid and passes the end on with ``text``
    cut to what it said.
    """

    text: str = ""
    truncated: bool = False


# --- control and diagnostics ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TurnCancelled(Event):
    """The session dropped ``turn``: no more events of it will come out."""

    reason: str = "interrupted"


@dataclass(frozen=True, slots=True)
class ReplyInterrupted(Event):
    """The reply of ``turn`` was cut off (barge-in, the interrupt button, typed text, a newer
    question) after the user heard ``heard_s`` seconds of it: ``heard_text``, its words
    complete by then. The LLM handler keeps only those words in its history; the avatar
    closes its mouth from the frame on screen (``on_screen``: the reply was playing).
    ``continued``: the user went on talking (or typing), so a question whose reply they heard
    nothing of is asked again with the next one. ``shown``: the client was shown some of its
    text (a transport then sends the heard text as the reply's final text)."""

    heard_text: str
    heard_s: float
    on_screen: bool
    continued: bool
    reason: str
    shown: bool = False


def new_error_id() -> str:
    """A short random id that ties what a client is told about a failure to its log record."""
    return uuid.uuid4().hex[:8]


@dataclass(frozen=True, slots=True)
class ErrorEvent(Event):
    """A stage failed on ``turn``; the session goes on with the next turn.

    ``message`` is the detail (exception type and text) for the log and for tests: it may
    hold a server URL or a path, so it is never shown to a user. A client is told the
    ``stage`` in plain words and the ``error_id``, which the engine's log record of the
    failure carries too.
    """

    stage: str
    message: str
    error_id: str = field(default_factory=new_error_id)


@dataclass(frozen=True, slots=True)
class TimingMark(Event):
    """A named instant of a turn (``speech_end``, ``asr_final``, ``llm_first_token``…)."""

    name: str
    at: float = field(default_factory=now)


# --- avatar ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AvatarFrame(Event):
    """One rendered video frame of a reply. ``pts`` is seconds on the reply timeline (the
    clock of ``ReplyAudio.offset``), so frame and audio times share one clock."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    index: int
    pts: float


@dataclass(frozen=True, slots=True)
class AvatarPose(Event):
    """A reply frame's face parameters instead of its image, for a client that renders the
    avatar itself (``SessionInfo.avatar_output == "params"``). ``values`` are in the order
    of ``names`` (the avatar handler's ``pose_names``); ``index`` and ``pts`` as for an
    ``AvatarFrame``, on the reply timeline."""

    index: int
    pts: float
    names: tuple[str, ...]
    values: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class AvatarMotion(Event):
    """The mouth curves behind a stretch of frames, for a client-side renderer.

    ``times`` are seconds on the reply timeline; ``channels`` names the columns of
    ``values`` (jaw, stretch, round, upper, press); ``visemes`` is one label per time.
    """

    times: tuple[float, ...]
    channels: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]
    visemes: tuple[str, ...]


#: Events the control lane carries (see the module docstring).
CONTROL: tuple[type[Event], ...] = (
    SpeechStarted,
    SpeechOngoing,
    SpeechEnded,
    UserTranscript,
    EndOfTurnHint,
    EndOfTurnGuess,
    TurnCancelled,
    ReplyInterrupted,
)
