"""End of turn from what was said and how it sounded: the early transcript and, with a
``turn`` stage, an audio model's guess lengthen the VAD's hangover when the user is
mid-sentence and shorten it for a complete question.

The VAD hands the utterance to the ASR after a short pause (``SpeechPaused``), and the ASR
passes it on to the ``turn`` stage (beside its transcription where a core is free, else
after); the ASR's transcript of it (``final=False``, with the pause's ``speech_end``) and
the audio model's ``EndOfTurnGuess``, in either order, reach ``EndOfTurn`` on the
session's control lane, and an ``EndOfTurnHint`` goes back on the lane to the VAD. The
session wires it from ``session.end_of_turn``. The trade-off: a short hangover answers
sooner but cuts people who pause to think; a long one never cuts them but makes every
answer wait. Judging the words lets complete questions end early and "I want to go to, um,"
wait; the voice catches what the words cannot tell: Whisper writes "I was thinking about
the weather today." for a phrase the speaker's pitch says is not the end."""

from __future__ import annotations

import re
from collections.abc import Callable

from avatarchat.engine.endofturn_zh import asks_zh, looks_unfinished_zh
from avatarchat.engine.events import EndOfTurnGuess, EndOfTurnHint, Event, UserTranscript
from avatarchat.engine.handler import EndOfTurnSettings
from avatarchat.engine.patience import PauseHabit

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


#: Marks that leave a sentence open, and those that close one, in any language's script.
_OPEN_MARKS = (",", ";", ":", "-", "—", "…", "...", "，", "、", "；", "：")
_CLOSE_MARKS = ("?", "!", ".", "？", "！", "。")


def looks_unfinished(text: str, language: str = "en") -> bool | None:
    """True if ``text`` stops mid-sentence, False if it ends a sentence, None if unsure.

    English and Chinese have word rules; another language is judged by its punctuation
    alone (English function words would misjudge it)."""
    t = text.strip()
    if not t:
        return None
    lang = language.lower().split("-")[0].split("_")[0]
    if lang == "zh":
        return looks_unfinished_zh(t)
    if lang != "en":
        return True if t.endswith(_OPEN_MARKS) else False if t.endswith(_CLOSE_MARKS) else None
    if t.endswith(_OPEN_MARKS):
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


def asks(text: str, language: str) -> bool:
    """True if the words end a question so plainly that no voice outweighs them: Chinese
    questions (…吗？ …呢？, ``endofturn_zh.asks_zh``), which Smart Turn heard as "more to come"
    in 8 of 11 (the Mandarin voice's flat question endings). English questions are weighed
    with the voice as before: Smart Turn hears them well."""
    return language.lower().startswith("zh") and asks_zh(text)


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
    """Watches a session's pauses and sends the VAD the hangover for each one.

    A pause is judged from its early transcript (``looks_unfinished``) and, when the pipeline
    has a ``turn`` stage (``voice=True``), from that stage's ``EndOfTurnGuess`` for the same
    pause, whichever comes second (the guess, ~60 ms after the words: the reply started on
    the words meanwhile, ``engine.speculation``); ``hangover_ms`` weighs them. A pause whose
    guess never comes (the model failed on it, logged by the session) keeps the VAD's own
    ``end_ms``: slow, not wrong. A pause judged finished waits at least ``PauseHabit``'s
    floor: longer for a user who has gone on after such pauses (``patience_margin_ms``).
    """

    WATCHES: tuple[type[Event], ...] = tuple(dict.fromkeys((UserTranscript, EndOfTurnGuess, *PauseHabit.WATCHES)))

    def __init__(self, signal: Callable[[Event], None], settings: EndOfTurnSettings, *, voice: bool = False,
                 language: str = "en") -> None:
        self.signal = signal
        self.settings = settings
        self.voice = voice
        self.language = language
        #: The newest pause: (turn, speech_end) -> its words' verdict / its voice, as known.
        self._pause: tuple[int, float] | None = None
        self._words: tuple[bool | None] | None = None  # (verdict,) once the transcript came
        self._asks = False  # the words end a question no voice outweighs (``asks``)
        self._guess: float | None = None
        # Never longer than a pause that stops mid-sentence waits.
        self.habit = PauseHabit(settings.patience_margin_ms, cap_ms=settings.unfinished_ms)

    def on_event(self, event: Event) -> None:
        """A transcript, an audio guess or the VAD's word of speech (``Session.listen``)."""
        if isinstance(event, PauseHabit.WATCHES):
            self.habit.on_event(event)
        if isinstance(event, EndOfTurnGuess):
            self._at(event.turn, event.speech_end)
            self._guess = event.complete
        elif isinstance(event, UserTranscript):
            # Only a pause's transcript: it knows which silence it was made in, and the VAD
            # drops a hint whose silence has since been broken by more speech.
            if event.final or event.speech_end is None:
                return
            self._at(event.turn, event.speech_end)
            self._words = (looks_unfinished(event.text, self.language),)
            self._asks = asks(event.text, self.language)
        else:
            return
        if self._words is None or (self.voice and self._guess is None and not self._asks):
            return
        assert self._pause is not None
        s = self.settings
        silence = hangover_ms(self._words[0], None if self._asks else self._guess, complete_ms=s.complete_ms,
                              unfinished_ms=s.unfinished_ms, doubtful_ms=s.doubtful_ms,
                              threshold=s.audio_threshold)
        turn, speech_end = self._pause
        self._pause = None  # judged: a late duplicate must not send a second hint
        if 0 < silence < s.unfinished_ms:  # sounds finished: yet the user may go on
            self.habit.judged(turn, speech_end, silence)
            silence = max(silence, self.habit.floor_ms())
        if silence > 0:
            self.signal(EndOfTurnHint(turn, speech_end, silence))

    def _at(self, turn: int, speech_end: float) -> None:
        """Make ``(turn, speech_end)`` the pause being judged (a newer one drops the old)."""
        if self._pause != (turn, speech_end):
            self._pause = (turn, speech_end)
            self._words, self._guess, self._asks = None, None, False
