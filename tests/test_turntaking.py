"""Turn-taking (voice barge-in) with a fake floor and virtual time, what-was-heard
truncation, and the LLM history a cut reply leaves, through a real session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from avatarchat.engine.events import (
    PhonemeTiming,
    ReplyAudio,
    ReplyEnd,
    ReplyInterrupted,
    SpeechEnded,
    SpeechOngoing,
    SpeechStarted,
    TurnCancelled,
    UserTranscript,
)
from avatarchat.engine.handler import HandlerOptions, SessionInfo, SessionSettings
from avatarchat.engine.heard import SpokenChunk, heard_text, word_ends
from avatarchat.engine.session import Session
from avatarchat.engine.turntaking import CONFIRM_GRACE_S, MIN_WORD_SPEECH_S, TurnTaking, has_words
from avatarchat.handlers.llm.base import INTERRUPTED_MARK, ChatContext, ChatLLM, Message
from avatarchat.engine.floor import ReplyFloor
from avatarchat.server.tracks import AUDIO_FRAME, MediaClock, Playout

# --- fakes ---------------------------------------------------------------------------------


class VirtualTime:
    """A clock and a ``call_at`` scheduler; ``advance`` runs the timers that come due."""

    def __init__(self) -> None:
        self.t = 100.0
        self.timers: list[list[Any]] = []  # [when, fn, cancelled]

    def __call__(self) -> float:
        return self.t

    def call_at(self, when: float, fn: Callable[[], None]) -> Any:
        entry = [when, fn, False]
        self.timers.append(entry)

        class Handle:
            def cancel(self) -> None:
                entry[2] = True
        return Handle()

    def advance(self, dt: float) -> None:
        self.t += dt
        for entry in sorted(self.timers, key=lambda e: e[0]):
            if entry[0] <= self.t and not entry[2]:
                entry[2] = True
                entry[1]()


@dataclass
class FakeFloor:
    """``playing_turn``: the reply heard now; ``preparing``: replies in flight, not heard yet."""

    playing_turn: int | None = 1
    preparing: list[int] = field(default_factory=list)
    volume: float = 1.0
    log: list[tuple[Any, ...]] = field(default_factory=list)

    def playing(self) -> int | None:
        return self.playing_turn

    def replies(self) -> list[int]:
        return sorted(set(self.preparing) | ({self.playing_turn} if self.playing_turn is not None else set()))

    def start_playing(self, tt: TurnTaking) -> None:
        """The oldest reply in preparation starts to play, as the peer reports it."""
        self.playing_turn = self.preparing.pop(0)
        tt.reply_started(self.playing_turn)

    def duck(self, volume: float) -> None:
        self.volume = volume
        self.log.append(("duck", volume))

    def restore(self) -> None:
        self.volume = 1.0
        self.log.append(("restore",))

    def cut(self, before: int | None, reason: str) -> list[int]:
        self.log.append(("cut", before, reason))
        cut = [t for t in self.replies() if before is None or t < before]
        self.preparing = [t for t in self.preparing if t not in cut]
        if self.playing_turn in cut:
            self.playing_turn = None
        return cut

    def dismiss(self, turn: int, reason: str) -> None:
        self.log.append(("dismiss", turn, reason))

    def cuts(self) -> list[tuple[Any, ...]]:
        return [e for e in self.log if e[0] == "cut"]


def machine(floor: FakeFloor, **kw: Any) -> tuple[TurnTaking, VirtualTime]:
    vt = VirtualTime()
    return TurnTaking(floor, min_speech_s=0.3, duck_volume=0.2, clock=vt, call_at=vt.call_at, **kw), vt


def speak(tt: TurnTaking, vt: VirtualTime, turn: int, seconds: float, onset_lag: float = 0.1) -> float:
    """The VAD's view of ``seconds`` of speech: SpeechStarted ~100 ms after the onset, then
    a SpeechOngoing every 64 ms of voice, each ~30 ms after its audio. Returns the onset."""
    onset = vt.t
    vt.advance(onset_lag)
    tt.on_event(SpeechStarted(turn, at=onset))
    voiced = onset + onset_lag
    while voiced + 0.064 <= onset + seconds:
        voiced += 0.064
        vt.advance(voiced + 0.03 - vt.t)
        tt.on_event(SpeechOngoing(turn, voiced_until=voiced))
    return onset


# --- the state machine -------------------------------------------------------------------


def test_speech_during_a_reply_ducks_at_once_and_cuts_once_it_lasted_min_speech() -> None:
    floor = FakeFloor()
    tt, vt = machine(floor)
    onset = vt.t
    vt.advance(0.1)
    tt.on_event(SpeechStarted(2, at=onset))
    assert floor.log == [("duck", 0.2)] and tt.pending == 2
    speak_until = onset + 1.0
    voiced = onset + 0.1
    while not floor.cuts():
        voiced += 0.064
        vt.advance(voiced + 0.03 - vt.t)
        tt.on_event(SpeechOngoing(2, voiced_until=voiced))
        assert voiced < speak_until
    assert floor.cuts() == [("cut", 2, "barge-in")] and floor.volume == 1.0
    record = tt.history[0]
    # Decided by the first report of voice at or past onset + 300 ms.
    assert 0.3 <= record.at - record.onset <= 0.3 + 0.064 + 0.03 + 1e-9
    assert record.cut == (1,) and record.why == "speech" and tt.pending is None


def test_a_blip_shorter_than_min_speech_does_not_cut_and_the_volume_comes_back() -> None:
    floor = FakeFloor()
    tt, vt = machine(floor)
    onset = speak(tt, vt, 2, 0.12)
    assert floor.volume == 0.2
    vt.advance(onset + 0.3 + CONFIRM_GRACE_S - vt.t)  # the deadline: no more voice came
    assert floor.volume == 1.0 and not floor.cuts()
    vt.advance(0.5)
    tt.on_event(TurnCancelled(2, reason="too short"))
    assert not floor.cuts() and tt.pending is None
    assert floor.log == [("duck", 0.2), ("restore",)]


def test_speech_that_ends_short_is_judged_by_its_transcript() -> None:
    floor = FakeFloor()
    tt, vt = machine(floor)
    speak(tt, vt, 2, 0.25)
    tt.on_event(SpeechEnded(2, audio=np.zeros(10, np.float32), speech_end=vt.t))
    assert floor.volume == 1.0 and not floor.cuts()
    tt.on_event(UserTranscript(2, "Mm-hmm.", final=True))
    assert not floor.cuts() and ("dismiss", 2, "backchannel") in floor.log

    floor2 = FakeFloor()
    tt2, vt2 = machine(floor2)
    speak(tt2, vt2, 2, 0.25)
    tt2.on_event(SpeechEnded(2, audio=np.zeros(10, np.float32), speech_end=vt2.t))
    tt2.on_event(UserTranscript(2, "Stop.", final=True))
    assert floor2.cuts() == [("cut", 2, "barge-in")] and tt2.history[0].why == "words"


def test_words_read_into_a_burst_shorter_than_a_word_do_not_cut() -> None:
    """Echo leaking past the browser's canceller on a busy machine comes in 80-200 ms bursts,
    and Whisper puts words to them: under MIN_WORD_SPEECH_S of voice they are noise."""
    floor = FakeFloor()
    tt, vt = machine(floor)
    onset = vt.t
    vt.advance(0.1)
    tt.on_event(SpeechStarted(2, at=onset))
    tt.on_event(UserTranscript(2, "The story", final=False, speech_end=onset + 0.09))
    assert not floor.cuts() and tt.pending == 2
    tt.on_event(SpeechEnded(2, audio=np.zeros(10, np.float32), speech_end=onset + 0.09))
    tt.on_event(UserTranscript(2, "The story.", final=True))
    assert not floor.cuts() and ("dismiss", 2, "backchannel") in floor.log

    floor2 = FakeFloor()
    tt2, vt2 = machine(floor2)
    onset = vt2.t
    vt2.advance(0.1)
    tt2.on_event(SpeechStarted(2, at=onset))
    tt2.on_event(SpeechEnded(2, audio=np.zeros(10, np.float32), speech_end=onset + MIN_WORD_SPEECH_S))
    tt2.on_event(UserTranscript(2, "No.", final=True))
    assert floor2.cuts() == [("cut", 2, "barge-in")]


def test_a_partial_transcript_with_words_cuts_before_min_speech() -> None:
    floor = FakeFloor()
    tt, vt = machine(floor)
    tt.on_event(SpeechStarted(2, at=vt.t))
    tt.on_event(UserTranscript(2, "uh", final=False))
    assert not floor.cuts()
    tt.on_event(UserTranscript(2, "wait a", final=False))
    assert floor.cuts() == [("cut", 2, "barge-in")]


def test_no_reply_playing_means_no_action() -> None:
    floor = FakeFloor(playing_turn=None)
    tt, vt = machine(floor)
    speak(tt, vt, 2, 1.0)
    vt.advance(1.0)
    assert floor.log == [] and tt.pending is None and tt.history == []


def test_speech_while_the_reply_is_prepared_drops_it_before_it_is_heard() -> None:
    """The user goes on after a pause that ended their turn: once the new speech lasts
    min_speech, the reply being prepared is dropped, with nothing to duck."""
    floor = FakeFloor(playing_turn=None, preparing=[1])
    tt, vt = machine(floor)
    onset = speak(tt, vt, 2, 0.5)
    assert floor.cuts() == [("cut", 2, "barge-in")] and floor.preparing == []
    assert not [e for e in floor.log if e[0] == "duck"] and tt.ducks == []
    record = tt.history[0]
    assert record.cut == (1,) and record.why == "speech" and 0.3 <= record.at - onset < 0.3 + 0.1


def test_a_reply_that_starts_while_the_user_speaks_is_ducked_from_its_start() -> None:
    floor = FakeFloor(playing_turn=None, preparing=[1])
    tt, vt = machine(floor)
    tt.on_event(SpeechStarted(2, at=vt.t))
    assert floor.log == [] and tt.pending == 2
    vt.advance(0.1)
    floor.start_playing(tt)
    assert floor.log == [("duck", 0.2)] and tt.ducks[0][0] == 2
    tt.on_event(UserTranscript(2, "and then we", final=False))
    assert floor.cuts() == [("cut", 2, "barge-in")] and floor.volume == 1.0


def test_a_cough_while_the_reply_is_prepared_lets_it_play_at_full_volume() -> None:
    floor = FakeFloor(playing_turn=None, preparing=[1])
    tt, vt = machine(floor)
    onset = speak(tt, vt, 2, 0.12)
    vt.advance(onset + 0.3 + CONFIRM_GRACE_S - vt.t)  # the deadline: no more voice came
    floor.start_playing(tt)  # after the deadline: not ducked
    tt.on_event(TurnCancelled(2, reason="too short"))
    assert floor.log == [] and floor.playing_turn == 1 and tt.pending is None
    # Another cough: its empty transcript drops it unanswered, and the reply plays on.
    speak(tt, vt, 3, 0.2)
    tt.on_event(SpeechEnded(3, audio=np.zeros(10, np.float32), speech_end=vt.t))
    tt.on_event(UserTranscript(3, "", final=True))
    assert not floor.cuts() and ("dismiss", 3, "backchannel") in floor.log and floor.volume == 1.0


def test_disabled_barge_in_only_supersedes_on_a_final_question() -> None:
    floor = FakeFloor()
    tt, vt = machine(floor, enabled=False)
    speak(tt, vt, 2, 1.0)
    assert floor.log == []
    tt.on_event(UserTranscript(2, "", final=True))
    assert floor.log == []  # noise transcribes to nothing: the reply goes on
    tt.on_event(UserTranscript(2, "What is the capital of France?", final=True))
    assert floor.cuts() == [("cut", 2, "superseded")]


def test_typed_text_and_the_interrupt_button_take_the_same_path() -> None:
    for reason in ("text", "interrupt"):
        floor = FakeFloor()
        tt, vt = machine(floor)
        tt.on_event(SpeechStarted(2, at=vt.t))  # even while a barge-in is being weighed
        assert tt.interrupt(reason) == [1]
        assert floor.log == [("duck", 0.2), ("restore",), ("cut", None, reason), ("restore",)]
        vt.advance(1.0)  # the pending decision's timer was cancelled
        assert floor.log[-1] == ("restore",) and len(floor.log) == 4 and tt.pending is None


def test_backchannel_words() -> None:
    assert not has_words("Mm-hmm.") and not has_words("Uh-huh, okay.") and not has_words(" ")
    assert not has_words("Thank you.")
    assert has_words("Wait.") and has_words("What is the capital of France?")
    # Chinese: a run of Han characters is words unless it is only acknowledgements.
    assert has_words("等一下") and has_words("你好") and has_words("不对，是北京。")
    assert not has_words("嗯嗯，好的。") and not has_words("对对对") and not has_words("谢谢！")


# --- the playout's side: ducking, and a stop that does not click ------------------------------


def test_playout_ducks_within_40_ms_restores_and_stops_with_a_short_fade() -> None:
    playout = Playout(MediaClock())
    playout.add_audio(ReplyAudio(1, np.full(24000 * 3, 0.5, np.float32), 24000, 0.0, "a"))
    n = playout._queue[0].start // AUDIO_FRAME  # type: ignore[operator]
    assert np.abs(playout.audio_frame(n)).max() > 16000
    playout.duck(0.2)
    frames = [playout.audio_frame(n + k).astype(np.float32) / 32767 for k in range(1, 4)]
    level = np.concatenate(frames)
    ms = np.argmax(level <= 0.5 * 0.2 + 1e-3) / 48  # where the fade reached 20 %
    assert 20 <= ms <= 40 and abs(level[-1] - 0.1) < 1e-3
    playout.restore()
    back = np.concatenate([playout.audio_frame(n + k) for k in range(4, 7)]).astype(np.float32) / 32767
    assert abs(back[-1] - 0.5) < 1e-3 and playout.volume == 1.0
    playout.clear(1)
    tail = playout.audio_frame(n + 7).astype(np.float32) / 32767
    assert 0 < np.abs(tail[:480]).max() <= 0.5 and not tail[480:].any()
    assert not playout.audio_frame(n + 8).any()


def test_animator_stop_at_closes_the_mouth_from_the_frame_on_screen() -> None:
    from avatarchat.avatar.animator import CLOSE_S, Animator

    anim = Animator(0)
    anim.begin(10.0)
    for c in CHUNKS:
        anim.speak(ReplyAudio(1, np.zeros(round(c.duration * 24000), np.float32), 24000, c.offset, c.text, c.phonemes))
    shown = anim.params_at(1.0)  # on screen when the reply is cut, although rendering ran ahead
    assert shown.jaw > anim.idle.at(11.0).jaw + 0.05  # mid-word: the mouth is open
    anim.stop_at(1.0, 11.5)  # the cut comes 0.5 s later than the render clock thinks
    first_idle = anim.idle_params(11.5)
    assert first_idle.jaw == pytest.approx(shown.jaw, abs=1e-6)
    halfway = anim.idle_params(11.5 + CLOSE_S / 2).jaw
    closed = anim.idle_params(11.5 + CLOSE_S + 0.01).jaw
    assert closed == pytest.approx(anim.idle.at(11.5 + CLOSE_S + 0.01).jaw, abs=1e-6)
    assert min(shown.jaw, closed) - 1e-6 <= halfway <= max(shown.jaw, closed) + 0.05


# --- what was heard --------------------------------------------------------------------------


def timed(words: list[tuple[str, float, float]]) -> tuple[PhonemeTiming, ...]:
    """Phoneme timings for (phonemes, start, end) words, with hibari's space entries."""
    out: list[PhonemeTiming] = []
    for i, (ph, a, b) in enumerate(words):
        step = (b - a) / len(ph)
        out += [PhonemeTiming(c, a + k * step, a + (k + 1) * step) for k, c in enumerate(ph)]
        if i < len(words) - 1:
            out.append(PhonemeTiming(" ", b, words[i + 1][1]))
    return tuple(out)


CHUNKS = [
    SpokenChunk("Once upon a time,", 0.0, 1.4, timed([("wˈʌns", 0.1, 0.33), ("əpˈɑn", 0.35, 0.6),
                                                     ("ɐ", 0.62, 0.65), ("tˈIm,", 0.7, 1.35)])),
    SpokenChunk("there lived a dragon.", 1.4, 1.5, timed([("ðɛɹ", 0.05, 0.3), ("lˈɪvd", 0.32, 0.7),
                                                         ("ɐ", 0.72, 0.8), ("dɹˈæɡən.", 0.85, 1.45)])),
]


@pytest.mark.parametrize("seconds, heard", [
    (0.0, ""), (0.2, ""), (0.34, "Once"), (0.66, "Once upon a"), (1.2, "Once upon a"),
    (1.36, "Once upon a time,"), (1.5, "Once upon a time,"), (1.72, "Once upon a time, there"),
    (2.5, "Once upon a time, there lived a"), (2.9, "Once upon a time, there lived a dragon."),
    (10.0, "Once upon a time, there lived a dragon."),
])
def test_heard_text_keeps_the_words_complete_by_then(seconds: float, heard: str) -> None:
    assert heard_text(reversed(CHUNKS), seconds) == heard


def test_heard_text_without_timings_or_with_extra_spoken_words() -> None:
    plain = [SpokenChunk("one two three four", 0.0, 2.0)]
    assert heard_text(plain, 1.0) == "one two"  # half the time: half the characters, whole words
    assert heard_text(plain, 0.2) == ""
    # "42" is said as two words: four spoken words for three written ones.
    chunk = SpokenChunk("I have 42", 0.0, 2.0, timed([("I", 0, .2), ("hæv", .3, .6), ("fˈɔɹTi", .7, 1.1), ("tˈu", 1.2, 1.5)]))
    assert word_ends(chunk.phonemes) == pytest.approx([0.2, 0.6, 1.1, 1.5])
    assert heard_text([chunk], 0.65) == "I"  # 2 of 4 spoken → 1 of 3 written (rounded down)
    assert heard_text([chunk], 1.6) == "I have 42"


# --- the history a cut leaves, through a real session ----------------------------------------


class StoryLLM(ChatLLM[HandlerOptions]):
    """A ChatLLM that tells a fixed story and keeps every request it got."""

    name = "story"

    def __init__(self, reply: list[str], delay: float = 0.0) -> None:
        super().__init__(HandlerOptions())
        self.reply, self.delay = reply, delay
        self.requests: list[list[Message]] = []

    async def stream(self, ctx: ChatContext, messages: list[Message]) -> AsyncGenerator[str, None]:
        self.requests.append(messages)
        for part in self.reply:
            await asyncio.sleep(self.delay)
            yield part


async def test_a_cut_reply_is_remembered_as_heard_and_the_next_request_sees_it() -> None:
    story = ["Once upon a time, ", "there lived a dragon. ", "It was very old."]
    llm = StoryLLM(story)
    info = SessionInfo("s", SessionSettings(history_turns=4))
    async with Session([llm], info) as session:
        playout = Playout(MediaClock())
        floor = ReplyFloor(session, playout)
        turn = session.say("Tell me a long story about a dragon.")
        async for event in session.events():
            floor.note(event)
            if isinstance(event, ReplyEnd):
                break
        # The reply was generated whole (so it is in history); the playout plays its audio.
        for c in CHUNKS:
            floor.note(ReplyAudio(turn, np.full(round(c.duration * 24000), 0.1, np.float32), 24000,
                                  c.offset, c.text, c.phonemes))
            playout.add_audio(ReplyAudio(turn, np.full(round(c.duration * 24000), 0.1, np.float32), 24000,
                                         c.offset, c.text, c.phonemes))
        playout.end(turn)
        first = playout._queue[0].start // AUDIO_FRAME  # type: ignore[operator]
        for n in range(first, first + 86):  # 1.72 s of the reply handed to the encoder
            playout.audio_frame(n)
        assert playout.played_seconds(turn) == pytest.approx(1.72)

        assert floor.cut(None, "interrupt") == [turn]
        assert playout.playing is None
        cut = await anext(e async for e in session.events() if isinstance(e, ReplyInterrupted))
        assert (cut.turn, cut.heard_text, cut.shown, cut.continued) == (turn, "Once upon a time, there", True, False)

        llm.reply = ["Paris."]
        nxt = session.say("What is the capital of France?")
        async for event in session.events():
            if isinstance(event, ReplyEnd) and event.turn == nxt:
                break
    messages = llm.requests[-1]
    assert messages[-3:] == [
        {"role": "user", "content": "Tell me a long story about a dragon."},
        {"role": "assistant", "content": f"Once upon a time, there {INTERRUPTED_MARK}"},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    assert sum(m["role"] == "assistant" for m in messages) == 1  # the whole story is gone


async def test_a_reply_cut_while_generating_keeps_what_was_heard() -> None:
    llm = StoryLLM([f"word{i} " for i in range(200)], delay=0.01)
    async with Session([llm], SessionInfo("s")) as session:
        floor = ReplyFloor(session, Playout(MediaClock()))
        turn = session.say("Go on and on.")
        async for event in session.events():
            if getattr(event, "text", "").startswith("word3"):
                break
        assert floor.cut(None, "interrupt") == [turn]  # nothing played yet: nothing heard
        # The LLM stage rewrites its history from the control lane, in its own task.
        cut = await anext(e async for e in session.events() if isinstance(e, ReplyInterrupted))
        assert cut.heard_text == "" and cut.heard_s == 0.0
        await anext(e async for e in session.events() if isinstance(e, TurnCancelled))
        ctx = session.context("llm")
        for _ in range(10):  # the control task runs once the loop does (these reads did not wait)
            if ctx.history:
                break
            await asyncio.sleep(0)
        assert list(ctx.history) == [("Go on and on.", INTERRUPTED_MARK)] and ctx.asked == {}
