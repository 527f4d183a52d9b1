"""Turn-taking: when the user's voice (or a typed message, or the interrupt button) takes
the floor from the avatar's reply.

``TurnTaking`` is a small state machine fed with the session's user-side events the moment
a stage emits them (the control lane, ``Session.listen``: not through the pipeline, where
they would wait behind a stage busy with the reply). It acts on a ``Floor``: the replies as
a ``ReplySink`` plays them (``engine.floor``). ``engine.conversation`` wires it for every
transport; it is clock-injectable, so it is tested with fakes and virtual time.

Voice barge-in::

    SpeechStarted while a reply is in flight ──▶ WEIGHED (a playing reply: faded to duck_volume)
        │ SpeechOngoing: speech lasted min_speech since its onset  ─┐
        │ a transcript (partial or final) with real words, of at   ─┴─▶ cut the reply
        │   least MIN_WORD_SPEECH_S of voice
        │ SpeechEnded / TurnCancelled ("too short") / the deadline  ──▶ volume restored;
        │      still watching the turn's transcript: real words cut the reply,
        │      nothing or a backchannel ("mm-hm") drops the user's turn unanswered
        ▼
    idle

The deadline is the onset plus ``min_speech`` plus ``CONFIRM_GRACE_S`` (the VAD's report of
continued speech arrives a chunk or two after the audio it is about).

Speech that starts while an earlier reply is still being prepared (the user goes on after
a pause the end of turn took for the end) is weighed the same way, so the avatar does not
start talking over them: confirmed, it drops that reply, heard or not; if the reply starts
playing while the speech is being weighed, it is ducked from its first sample
(``reply_started``). Without any reply in flight, speech changes nothing here; a final
transcript with words supersedes older replies still in flight, as typed text and the
interrupt button cut everything at once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from avatarchat.engine.clock import REAL_CLOCK, Cancellable
from avatarchat.engine.events import (
    Event,
    SpeechEnded,
    SpeechOngoing,
    SpeechStarted,
    TurnCancelled,
    UserTranscript,
)

log = logging.getLogger(__name__)

#: After onset + min_speech, how long to wait for the VAD's word that speech went on.
CONFIRM_GRACE_S = 0.12
#: Words cut a reply only from this much voice on: no word is shorter, but a burst of the
#: avatar's own echo that the browser's canceller lets through on a busy machine (80-200 ms)
#: is, and Whisper reads words into it.
MIN_WORD_SPEECH_S = 0.15
#: Words that acknowledge rather than take the turn (and Whisper's usual words for noise).
BACKCHANNELS = frozenset(
    "mm mmm hm hmm mhm uh huh um uhm ah oh ok okay yeah yep yes right sure wow cool "
    "i see got it thank thanks you".split()
)


#: ``call_at(when, fn)``: run ``fn`` at engine-clock time ``when``; returns a handle.
Scheduler = Callable[[float, Callable[[], None]], Cancellable]


class Floor(Protocol):
    """What turn-taking acts on: the reply the user hears. All calls return at once."""

    def playing(self) -> int | None:
        """The turn whose reply the user is hearing now, if any."""

    def replies(self) -> list[int]:
        """The turns whose reply is in flight: being generated, or queued, or playing."""

    def duck(self, volume: float) -> None:
        """Fade the reply audio to ``volume`` (0..1) within a few tens of milliseconds."""

    def restore(self) -> None:
        """Fade the reply audio back to full volume."""

    def cut(self, before: int | None, reason: str) -> list[int]:
        """Stop every reply of a turn older than ``before`` (every turn in flight when
        None) at once, keeping what was heard; returns the turns stopped."""

    def dismiss(self, turn: int, reason: str) -> None:
        """Drop the user's ``turn`` unanswered (a backchannel, noise)."""


#: Chinese acknowledgements, longest first (a run of Han characters is one "word" to a
#: regex; what is left of it once these are taken out says something).
BACKCHANNELS_ZH = tuple(sorted("嗯嗯 嗯 啊 哦 噢 呃 唔 好的 好 对对 对 是的 是 行 谢谢 明白 知道了".split(), key=len, reverse=True))
_HAN = re.compile(r"[\u3400-\u9fff]+")


def has_words(text: str) -> bool:
    """Whether ``text`` says something that takes the turn: any word not a backchannel, in
    English or Chinese ("等一下" does; "嗯嗯，好的" does not)."""
    low = text.lower()
    if any(w not in BACKCHANNELS for w in re.findall(r"[a-z0-9']+", low)):
        return True
    for run in _HAN.findall(low):
        for b in BACKCHANNELS_ZH:
            run = run.replace(b, "")
        if run:
            return True
    return False


@dataclass
class _Pending:
    """A user turn that began while a reply was in flight and has not taken the floor yet.
    ``weighing``: until its deadline or its speech's end (a reply that starts meanwhile is
    ducked); ``ducked``: the reply's volume is down now."""

    turn: int
    onset: float
    voiced_until: float | None = None
    ducked: bool = False
    weighing: bool = True
    timer: Cancellable | None = None


@dataclass(frozen=True)
class BargeIn:
    """A confirmed barge-in: the user's turn, its speech onset and the decision time
    (engine clock), and the reply turns it stopped."""

    turn: int
    onset: float
    at: float
    cut: tuple[int, ...]
    why: str


class TurnTaking:
    """Decides when the user takes the floor; see the module docstring.

    Feed it with ``on_event`` (the types in ``WATCHES``); call ``interrupt`` for typed text
    and the interrupt button. Ownership: it holds at most one timer and cancels it itself;
    ``close`` cancels it too. Not thread-safe: the event loop only.
    """

    WATCHES: tuple[type[Event], ...] = (SpeechStarted, SpeechOngoing, SpeechEnded, TurnCancelled, UserTranscript)

    def __init__(self, floor: Floor, *, enabled: bool = True, min_speech_s: float = 0.3,
                 duck_volume: float = 0.2, clock: Callable[[], float] = REAL_CLOCK.now,
                 call_at: Scheduler = REAL_CLOCK.call_at,
                 on_barge_in: Callable[[BargeIn], None] | None = None) -> None:
        self.floor = floor
        self.enabled = enabled
        self.min_speech_s = min_speech_s
        self.duck_volume = duck_volume
        self._clock = clock
        self._call_at = call_at
        self._on_barge_in = on_barge_in
        self._pending: _Pending | None = None
        #: Confirmed barge-ins, and every duck as (user turn, speech onset, ducked at).
        self.history: list[BargeIn] = []
        self.ducks: list[tuple[int, float, float]] = []

    @property
    def pending(self) -> int | None:
        """The user turn being weighed as a barge-in, if any."""
        return self._pending.turn if self._pending is not None else None

    def on_event(self, event: Event) -> None:
        p = self._pending
        if isinstance(event, SpeechStarted):
            self._started(event)
        elif isinstance(event, UserTranscript):
            self._transcript(event)
        elif p is None or event.turn != p.turn:
            return
        elif isinstance(event, SpeechOngoing):
            p.voiced_until = event.voiced_until
            if event.voiced_until - p.onset >= self.min_speech_s:
                self._confirm("speech")
        elif isinstance(event, SpeechEnded):
            p.voiced_until = event.speech_end
            self._unduck()  # short: the transcript decides whether it takes the floor
        elif isinstance(event, TurnCancelled):
            self._drop()  # a blip ("too short") or the turn was cancelled elsewhere

    def interrupt(self, reason: str) -> list[int]:
        """Typed text or the interrupt button: cut every reply in flight now."""
        self._drop()
        cut = self.floor.cut(None, reason)
        self.floor.restore()
        return cut

    def close(self) -> None:
        self._drop()

    # -- the states -------------------------------------------------------------------

    def reply_started(self, turn: int) -> None:
        """The first audio of ``turn``'s reply is going out: a user already speaking
        (being weighed) hears it ducked."""
        p = self._pending
        if p is not None and p.weighing and not p.ducked and turn < p.turn:
            self._duck(p)

    def _started(self, event: SpeechStarted) -> None:
        if not self.enabled or not any(t < event.turn for t in self.floor.replies()):
            return
        self._drop()
        p = self._pending = _Pending(event.turn, event.at)
        reply = self.floor.playing()
        if reply is not None and reply < event.turn:
            self._duck(p)
        p.timer = self._call_at(event.at + self.min_speech_s + CONFIRM_GRACE_S, self._deadline)

    def _duck(self, p: _Pending) -> None:
        p.ducked = True
        self.floor.duck(self.duck_volume)
        self.ducks.append((p.turn, p.onset, self._clock()))

    def _transcript(self, event: UserTranscript) -> None:
        p = self._pending
        words = has_words(event.text)
        if p is not None and event.turn == p.turn:
            voiced_until = event.speech_end if event.speech_end is not None else p.voiced_until
            if words and voiced_until is not None and voiced_until - p.onset < MIN_WORD_SPEECH_S:
                words = False  # too short to be a word: echo or a click Whisper put words to
                if not event.final:
                    return
            if words:
                self._confirm("words")
            elif event.final:
                self._drop()
                self.floor.dismiss(event.turn, "backchannel")
        elif event.final and words:
            # A newer question supersedes older replies still in flight.
            self.floor.cut(event.turn, "superseded")

    def _deadline(self) -> None:
        p = self._pending
        if p is not None:
            p.timer = None
            self._unduck()

    def _confirm(self, why: str) -> None:
        p = self._pending
        assert p is not None
        self._drop(restore=False)
        cut = self.floor.cut(p.turn, "barge-in")
        # After the cut: the ducked reply is gone, and the answer must play at full volume.
        self.floor.restore()
        record = BargeIn(p.turn, p.onset, self._clock(), tuple(cut), why)
        self.history.append(record)
        log.info("barge-in by turn %s (%s) %.0f ms after its onset; cut %s",
                 p.turn, why, (record.at - p.onset) * 1000, list(cut))
        if self._on_barge_in is not None:
            self._on_barge_in(record)

    def _unduck(self) -> None:
        p = self._pending
        if p is None:
            return
        p.weighing = False
        if p.ducked:
            p.ducked = False
            self.floor.restore()

    def _drop(self, restore: bool = True) -> None:
        p, self._pending = self._pending, None
        if p is None:
            return
        if p.timer is not None:
            p.timer.cancel()
        if restore and p.ducked:
            self.floor.restore()
