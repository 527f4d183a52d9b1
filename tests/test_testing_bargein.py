"""Barge-in in virtual time: ``engine.conversation.Conversation`` driven by a scripted user.

The pipeline is all fakes (``avatarchat.testing``): a ``ScriptedVAD`` that hears the script,
not audio; a ``FakeASR`` that hears the script's words; a ``FakeLLM`` with scripted replies;
a ``FakeTTS`` whose words last a known time; a ``FakeSink`` that plays in virtual time. The
engine's own parts (session, control lane, turn-taking, the cut, the LLM base class's
history) are real. Fakes on purpose: the tests are about the engine's turn-taking logic,
to the millisecond, and each runs in milliseconds of real time (``FakeClock``). The
real-model versions of these cases are in tests/test_peer_bargein.py.

Timing of the scripted user (``ScriptedVAD`` defaults, as silero's): speech that starts at
``s`` is reported 96 ms later, voice every 64 ms after that, the end 0.5 s after the last
voice, each with the first 20 ms microphone chunk that arrives at or after that time. Barge-in (defaults): duck to 0.2 at once, cut once the voice
has lasted 0.3 s, restore at ``s + 0.3 + 0.12`` if it has not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from avatarchat.engine.conversation import Conversation, ConversationListener
from avatarchat.engine.events import Event, ReplyInterrupted, TurnCancelled, UserTranscript
from avatarchat.engine.handler import BargeInSettings, SessionSettings
from avatarchat.handlers.llm.base import INTERRUPTED_MARK
from avatarchat.testing import (
    FakeASR,
    FakeClock,
    FakeLLM,
    FakeSink,
    FakeTTS,
    ScriptedVAD,
    UserSpeech,
    pipeline_of,
    speech_seconds,
)

STORY = "Once upon a time there was a small dragon. It lived by a quiet blue lake. Every morning it swam far."
CATS = "Cats sleep a lot."
#: The fake voice: 60 ms a letter, 40 ms between words.
LETTER_S, GAP_S = 0.06, 0.04
MIC_CHUNK_S = 0.02


def words_heard(text: str, seconds: float) -> str:
    """The words of ``text`` (said from 0 as FakeTTS says it, clause after clause: a letter
    or mark a phoneme) whose last sounding letter ended by ``seconds``: what the cut must
    leave in the LLM's history."""
    heard, t = [], 0.0
    for word in text.split():
        sounding = max(i for i, c in enumerate(word) if c.isalnum()) + 1
        if t + sounding * LETTER_S > seconds + 1e-9:
            break
        heard.append(word)
        t += len(word) * LETTER_S + GAP_S
    return " ".join(heard)


@dataclass
class Chat:
    """One conversation on fakes, and what came out of it."""

    clock: FakeClock
    conversation: Conversation
    sink: FakeSink
    llm: FakeLLM
    events: list[Event] = field(default_factory=list)

    async def mic(self, seconds: float) -> None:
        """A live microphone for ``seconds`` of virtual time: a 20 ms chunk as each ends."""
        for _ in range(round(seconds / MIC_CHUNK_S)):
            await self.clock.advance(MIC_CHUNK_S)
            self.conversation.push_audio(np.zeros(round(16_000 * MIC_CHUNK_S), np.float32), 16_000)

    def at(self, t: float) -> float:
        """Seconds since the conversation started (the script's time)."""
        return t - self.clock.start

    def cuts(self) -> list[ReplyInterrupted]:
        return [e for e in self.events if isinstance(e, ReplyInterrupted)]

    def sink_log(self) -> list[tuple[str, float, object]]:
        """(what, when in script time, turn or volume) for every sink record after the first
        question (which, typed, restores the volume whatever it was)."""
        return [(r.what, round(self.at(r.at), 3), r.turn if r.turn is not None else r.value)
                for r in self.sink.log if r.at > self.clock.start]

    def started(self, turn: int) -> float:
        return next(self.at(r.at) for r in self.sink.records("started") if r.turn == turn)


@pytest.fixture
async def chats() -> AsyncIterator[Callable[..., Awaitable[Chat]]]:
    """Opens conversations (``await chats(script, replies=..., barge_in=...)``) and closes
    them after the test."""
    opened: list[Conversation] = []

    async def open_chat(script: Sequence[UserSpeech] = (), replies: Sequence[str] = (STORY, CATS),
                        barge_in: BargeInSettings | None = None, first_token_s: float = 0.1) -> Chat:
        clock = FakeClock()
        vad = ScriptedVAD(script)
        llm = FakeLLM(replies, first_token_s=first_token_s, token_s=0.05)
        settings = SessionSettings(barge_in=barge_in or BargeInSettings())
        sink = FakeSink(clock)
        events: list[Event] = []
        conversation = Conversation(pipeline_of([vad, FakeASR(vad), llm, FakeTTS()], settings), sink,
                                    ConversationListener(event=events.append), session_id="fake", clock=clock)
        await conversation.start()
        opened.append(conversation)
        return Chat(clock, conversation, sink, llm, events)

    yield open_chat
    for conversation in opened:
        await conversation.close()


def story_request(reply: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": reply}]


async def test_a_cough_ducks_the_reply_and_the_volume_comes_back(chats: Callable[..., Awaitable[Chat]]) -> None:
    chat = await chats(script=[UserSpeech(2.0, 2.15, "")])
    chat.conversation.say("Tell me a story.")
    await chat.mic(3.0)
    assert [x for x in chat.sink_log() if x[0] in ("duck", "restore")] == [
        ("duck", 2.1, 0.2),  # reported with the first chunk 96 ms after the onset
        ("restore", 2.42, 1.0),  # onset + min_speech + grace: no voice came after 2.15
    ]
    assert [e for e in chat.events if isinstance(e, TurnCancelled)] == [TurnCancelled(2, "too short")]
    await chat.mic(10.0)
    assert not chat.cuts() and not chat.sink.records("cleared")
    # Played to its end: every clause, 60 ms a letter and 40 ms a word.
    assert [(r.turn, r.position) for r in chat.sink.records("finished")] == [(1, pytest.approx(speech_seconds(STORY)))]
    assert len(chat.llm.requests) == 1


async def test_speech_of_min_speech_cuts_the_reply_and_history_keeps_what_was_heard(chats: Callable[..., Awaitable[Chat]]) -> None:
    chat = await chats(script=[UserSpeech(2.0, 3.0, "Wait, tell me about cats.")])
    chat.conversation.say("Tell me a story.")
    await chat.mic(2.5)
    # Ducked at the report; cut by the first report of voice 0.3 s past the onset
    # (voiced to 2.352, which the chunk arriving at 2.36 carries), volume back for the answer.
    assert [x[:2] for x in chat.sink_log() if x[0] in ("duck", "cleared", "restore")] == [
        ("duck", 2.1), ("cleared", 2.36), ("restore", 2.36)]
    (cut,) = chat.cuts()
    heard_s = 2.36 - chat.started(1)
    assert cut.turn == 1 and cut.reason == "barge-in" and cut.on_screen and cut.continued
    assert cut.heard_s == pytest.approx(heard_s)
    assert cut.heard_text == words_heard(STORY, heard_s) and cut.heard_text.startswith("Once upon")
    await chat.mic(2.0)
    # The user's words end the turn (0.5 s after 3.0), and the next question is asked with
    # the cut reply as heard in its history.
    assert chat.llm.requests[1][1:] == [*story_request(f"{cut.heard_text} {INTERRUPTED_MARK}"),
                                        {"role": "user", "content": "Wait, tell me about cats."}]
    assert chat.started(2) > 3.5 and chat.sink.volume == 1.0


async def test_a_backchannel_is_dismissed_and_the_reply_plays_on(chats: Callable[..., Awaitable[Chat]]) -> None:
    chat = await chats(script=[UserSpeech(2.0, 2.25, "Mm-hmm.")])
    chat.conversation.say("Tell me a story.")
    await chat.mic(3.0)
    assert [x[:2] for x in chat.sink_log() if x[0] in ("duck", "restore")] == [("duck", 2.1), ("restore", 2.42)]
    # Dismissed on its final transcript, which goes with the turn (the client saw the
    # partial one made at the pause).
    assert TurnCancelled(2, "backchannel") in chat.events
    assert [(e.text, e.final) for e in chat.events if isinstance(e, UserTranscript) and e.turn == 2] == [
        ("Mm-hmm.", False)]
    await chat.mic(10.0)
    assert not chat.cuts() and [r.turn for r in chat.sink.records("finished")] == [1]
    assert len(chat.llm.requests) == 1  # "Mm-hmm." was never answered


async def test_typed_text_cuts_the_reply_at_once(chats: Callable[..., Awaitable[Chat]]) -> None:
    chat = await chats()
    chat.conversation.say("Tell me a story.")
    await chat.mic(2.0)
    chat.conversation.say("Tell me about cats.")
    await chat.clock.settle()  # the pump hands the cut to the listener
    (cut,) = chat.cuts()
    assert cut.reason == "text" and cut.continued
    assert chat.sink_log()[-2:] == [("cleared", 2.0, 1), ("restore", 2.0, 1.0)]
    assert cut.heard_text == words_heard(STORY, 2.0 - chat.started(1))
    await chat.mic(1.0)
    assert chat.llm.requests[1][1:] == [*story_request(f"{cut.heard_text} {INTERRUPTED_MARK}"),
                                        {"role": "user", "content": "Tell me about cats."}]
    assert chat.sink.playing == 2


async def test_without_barge_in_a_newer_question_supersedes_the_reply(chats: Callable[..., Awaitable[Chat]]) -> None:
    chat = await chats(script=[UserSpeech(2.0, 3.0, "What about cats?")], barge_in=BargeInSettings(enabled=False))
    chat.conversation.say("Tell me a story.")
    await chat.mic(3.4)
    assert not chat.cuts() and not chat.sink.records("duck")  # speech alone does nothing
    await chat.mic(0.2)  # the end of turn (3.5) and its transcript: a question with words
    (cut,) = chat.cuts()
    assert cut.reason == "superseded" and cut.turn == 1
    assert cut.heard_s == pytest.approx(3.5 - chat.started(1))
    await chat.mic(1.0)
    assert chat.llm.requests[1][-1] == {"role": "user", "content": "What about cats?"}
    assert chat.llm.requests[1][2] == {"role": "assistant", "content": f"{cut.heard_text} {INTERRUPTED_MARK}"}


async def test_speech_while_a_reply_is_prepared_drops_it_and_the_question_goes_on(
        chats: Callable[..., Awaitable[Chat]]) -> None:
    """The user goes on talking right after a question (here typed, then spoken at once): the
    reply in preparation is dropped once the speech has lasted min_speech, before a word of
    it is heard, and the spoken words are asked as the question's continuation."""
    chat = await chats(script=[UserSpeech(0.0, 1.2, "And what is it famous for?")],
                       replies=["Paris is the capital of France.", "It is famous for the tower."],
                       first_token_s=0.5)
    chat.conversation.say("What is the capital of France?")
    await chat.mic(1.0)
    (cut,) = chat.cuts()
    # Voice to 0.352 s (96 ms + 4 x 64), reported with the chunk at 0.36: the reply's first
    # word was 0.14 s away and its first audio (its whole sentence) 0.39 s, so none played.
    assert (cut.turn, cut.heard_text, cut.heard_s, cut.on_screen, cut.continued) == (1, "", 0.0, False, True)
    assert not chat.sink.records("started")
    await chat.mic(1.0)
    assert chat.llm.requests[1][1:] == [
        {"role": "user", "content": "What is the capital of France? And what is it famous for?"}]


async def test_the_interrupt_button_cuts_without_a_new_question(chats: Callable[..., Awaitable[Chat]]) -> None:
    chat = await chats()
    chat.conversation.say("Tell me a story.")
    await chat.mic(1.5)
    assert chat.conversation.interrupt() == [1]
    await chat.clock.settle()
    (cut,) = chat.cuts()
    assert cut.reason == "interrupt" and not cut.continued
    assert cut.heard_text == words_heard(STORY, 1.5 - chat.started(1))
    # The reply had been generated whole: the sink held the rest, and it is gone.
    assert [(r.what, r.turn) for r in chat.sink.log][-2:] == [("cleared", 1), ("restore", None)]
    await chat.mic(2.0)
    assert chat.sink.playing is None and len(chat.llm.requests) == 1
