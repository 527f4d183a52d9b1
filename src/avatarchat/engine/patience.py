"""Patience with a user who pauses mid-sentence: after they go on past a pause that the end
of turn took (or would have taken) for the end, later pauses that sound finished wait a
little longer than that one did.

Neither the words nor the voice can tell "How far is the Moon?" said whole from the same
words followed by a breath and "... from the Earth": whisper writes a question mark, Smart
Turn hears a finished question (0.96 against 0.99 whole: ``bench e2e --pauses``). A listener who answers
in 250 ms answers inside such a pause. People adapt instead: once cut off, they wait longer
for that speaker. ``PauseHabit`` does the same, per session, from what it sees on the control
lane:

- a pause judged finished (``judged``: the hangover the words and the voice asked for) that
  the user broke later than that hangover: within the turn (a ``SpeechOngoing`` after it,
  where patience already held the turn open), or in a new turn that starts within
  ``RESUME_WINDOW_S``, has words and lasts ``COMEBACK_VOICE_S`` (the turn was cut; a burst
  of the avatar's own echo is shorter);
- a pause judged finished that did end the turn, with no such comeback.

The newest ``MEMORY`` of these decide: while one of them is a comeback, a pause judged
finished waits the longest comeback's gap plus ``margin_ms`` (at most ``cap_ms``); a user who
stops pausing mid-sentence gets the quick end back after ``MEMORY`` finished pauses.
A session whose user never pauses mid-sentence is never slowed.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from avatarchat.engine.clock import SAME_INSTANT_S
from avatarchat.engine.events import Event, SpeechEnded, SpeechOngoing, SpeechStarted, UserTranscript
from avatarchat.engine.turntaking import has_words

log = logging.getLogger(__name__)

#: Speech this soon after a turn that ended at a pause judged finished is that turn going on.
#: Mid-sentence pauses are mostly under a second; a user who speaks up later is answering.
RESUME_WINDOW_S = 1.0
#: Finished-sounding pauses remembered: about three turns of a user who pauses once a question.
MEMORY = 6
#: Voice a comeback lasts at least: the echo of the reply that the browser's canceller lets
#: through on a busy machine comes in bursts of 80-200 ms, and whisper reads words into it.
COMEBACK_VOICE_S = 0.25


@dataclass(frozen=True)
class _Pause:
    turn: int
    speech_end: float
    base_ms: int  # the hangover the words and the voice asked for, before patience


@dataclass
class _Comeback:
    turn: int
    at: float  # its onset
    gap: float  # the silence before it
    voiced: bool = False  # it lasted COMEBACK_VOICE_S


class PauseHabit:
    """What one session's user does after pauses that sound finished (see the module)."""

    WATCHES: tuple[type[Event], ...] = (SpeechStarted, SpeechOngoing, SpeechEnded, UserTranscript)

    def __init__(self, margin_ms: int, cap_ms: int) -> None:
        self.margin_ms = margin_ms
        self.cap_ms = cap_ms
        self._outcomes: deque[float | None] = deque(maxlen=MEMORY)  # comeback gap (s), or None
        self._open: _Pause | None = None  # the newest pause judged finished, its turn still open
        self._ended: _Pause | None = None  # ... that ended its turn: is the next speech a comeback?
        self._comeback: _Comeback | None = None  # a new turn soon after, until its words come
        self._voice: tuple[int, float] | None = None  # the newest SpeechOngoing: turn, voiced until

    def floor_ms(self) -> int:
        """The least hangover for a pause that sounds finished now (0: no patience)."""
        gaps = [g for g in self._outcomes if g is not None]
        if not gaps or self.margin_ms <= 0:
            return 0
        return min(self.cap_ms, round(max(gaps) * 1000) + self.margin_ms)

    def judged(self, turn: int, speech_end: float, base_ms: int) -> None:
        """End of turn judged the pause after ``speech_end`` finished, asking ``base_ms``."""
        if self._voice is not None and self._voice[0] == turn and self._voice[1] > speech_end + SAME_INSTANT_S:
            return  # judged after the user went on: when is unknown, and it was soon
        self._open = _Pause(turn, speech_end, base_ms)

    def on_event(self, event: Event) -> None:
        c = self._comeback
        if isinstance(event, SpeechOngoing):
            self._voice = (event.turn, event.voiced_until)
            if c is not None and event.turn == c.turn and event.voiced_until - c.at >= COMEBACK_VOICE_S:
                c.voiced = True
            self._voice_again(event)
        elif isinstance(event, SpeechEnded):
            p, self._open = self._open, None
            if p is not None and p.turn == event.turn and abs(event.speech_end - p.speech_end) < SAME_INSTANT_S:
                self._ended = p
        elif isinstance(event, SpeechStarted):
            self._started(event)
        elif isinstance(event, UserTranscript) and c is not None and event.turn == c.turn:
            self._comeback = None
            self._record(c.gap if c.voiced and has_words(event.text) else None)

    def _voice_again(self, event: SpeechOngoing) -> None:
        p = self._open
        if p is None or p.turn != event.turn or event.voiced_until <= p.speech_end + SAME_INSTANT_S:
            return
        self._open = None
        gap = event.voiced_until - p.speech_end
        if gap * 1000 >= p.base_ms:  # the quick end would have cut them here
            self._record(gap)

    def _started(self, event: SpeechStarted) -> None:
        if self._comeback is not None:  # the last comeback never had words (a cough): an end
            self._comeback = None
            self._record(None)
        p, self._ended = self._ended, None
        if p is None:
            return
        gap = event.at - p.speech_end
        if gap <= RESUME_WINDOW_S:
            self._comeback = _Comeback(event.turn, event.at, gap)
        else:
            self._record(None)

    def _record(self, gap: float | None) -> None:
        before = self.floor_ms()
        self._outcomes.append(gap)
        after = self.floor_ms()
        if after != before:
            why = f"the user went on after a {gap:.2f} s pause" if gap is not None else "no pause went on of late"
            log.info("end of turn: %s; a pause that sounds finished now waits %d ms", why, after)
