"""End of turn from what was said: a cheap check on the early transcript that lengthens the
VAD's hangover when the user is mid-sentence and shortens it for a complete question.

The VAD hands the utterance to the ASR after a short pause (``SpeechPaused``); the ASR's
transcript of it (``final=False``, with the pause's ``speech_end``) reaches ``EndOfTurn`` on
the session's control lane, and an ``EndOfTurnHint`` goes back on the lane to the VAD. The
session wires it from ``session.end_of_turn``. The trade-off: a short hangover answers sooner
but cuts people who pause to think; a long one never cuts them but makes every answer wait.
Judging the words lets complete questions end early and "I want to go to, um," wait.
"""

from __future__ import annotations

import re

from collections.abc import Callable

from avatarchat.engine.events import EndOfTurnHint, Event, UserTranscript

#: Last words after which no sentence ends, whatever the punctuation: conjunctions,
#: articles, possessives, fillers ("... the park and." is a speaker who paused).
DANGLING_WORDS = frozenset(
    "and but or because if the a an my your our their um uh er erm hmm".split()
)
#: Last words that end a sentence only now and then: without closing punctuation they mean
#: the speaker is mid-sentence; with it, the question is complete ("How old are you?",
#: "Where are you from?", "What kind of dog was it?").
TRAILING_WORDS = frozenset(
    "so that which who when while where with without for to of in on at from by about like "
    "than as his her its this these those is are was were will would can could should i we "
    "you they".split()
)
_LAST_WORD = re.compile(r"([A-Za-z']+)[^A-Za-z']*$")


def looks_unfinished(text: str) -> bool | None:
    """True if ``text`` stops mid-sentence, False if it ends a sentence, None if unsure."""
    t = text.strip()
    if not t:
        return None
    if t.endswith((",", ";", ":", "-", "—", "…", "...")):
        return True
    m = _LAST_WORD.search(t)
    last = m.group(1).lower() if m else ""
    if last in DANGLING_WORDS:
        return True
    if t.endswith(("?", "!", ".")):
        return False
    if last in TRAILING_WORDS:
        return True
    return None


def hangover_ms(words: bool | None, voice: float | None, *, complete_ms: int, unfinished_ms: int,
                doubtful_ms: int = 0, threshold: float = 0.5) -> int:
    """The silence (ms) that ends a turn after a pause, from its words and its voice; 0 keeps
    the VAD's own ``end_ms``.

    ``words``: ``looks_unfinished`` of the pause's transcript (True: stops mid-sentence).
    ``voice``: an audio model's probability that the user finished (None: no model).
    Words that dangle ("... and the") always wait ``unfinished_ms``: no voice outweighs them.
    Otherwise, with a voice: both say finished -> ``complete_ms``; the voice says finished
    and the words cannot tell -> ``complete_ms``; they disagree (Whisper's full stop after a
    phrase spoken mid-sentence) -> ``doubtful_ms``; the voice says unfinished and the words
    cannot tell -> ``unfinished_ms``. Without a voice, the words alone, as before.
    """
    if words is True:
        return unfinished_ms
    if voice is None:
        return complete_ms if words is False else 0
    finished = voice >= threshold
    if finished:
        return complete_ms
    if words is False:
        return doubtful_ms or unfinished_ms
    return unfinished_ms


class EndOfTurn:
    """Watches a session's early transcripts and sends the VAD its hangover for each pause.

    ``complete_ms`` applies when the words end a sentence, ``unfinished_ms`` when they stop
    mid-sentence; when unsure, the VAD keeps its own ``end_ms``. Either may be 0 (not sent).
    """

    WATCHES: tuple[type[Event], ...] = (UserTranscript,)

    def __init__(self, signal: Callable[[Event], None], complete_ms: int, unfinished_ms: int) -> None:
        self.signal = signal
        self.complete_ms = complete_ms
        self.unfinished_ms = unfinished_ms

    def on_event(self, event: Event) -> None:
        """A transcript on the control lane (``Session.listen``)."""
        assert isinstance(event, UserTranscript)
        # Only a pause's transcript: it knows which silence it was made in, and the VAD
        # drops a hint whose silence has since been broken by more speech.
        if event.final or event.speech_end is None:
            return
        verdict = looks_unfinished(event.text)
        silence = {True: self.unfinished_ms, False: self.complete_ms}.get(verdict, 0)  # type: ignore[arg-type]
        if silence > 0:
            self.signal(EndOfTurnHint(event.turn, event.speech_end, silence))
