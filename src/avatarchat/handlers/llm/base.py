"""Shared pieces of the LLM stage: the per-session chat context and the ``ChatLLM`` base.

A concrete LLM handler only implements ``stream(ctx, messages)``: an async generator of text
deltas. The base turns a final ``UserTranscript`` into ``TimingMark``/``ReplyText``/``ReplyEnd``
events and keeps the bounded conversation history.

Cancellation contract: the engine cancels ``handle`` at an ``await`` (barge-in, interrupt
button) or closes it with ``aclose``. Either way ``stream`` is closed at once, so a subclass
stops its generation in its own ``finally``; the partial reply is not added to history here
(barge-in adds the part the user actually heard with ``record_interrupted``).
"""

from __future__ import annotations

import logging
import re
from abc import abstractmethod
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from avatarchat.engine.events import (
    Event,
    ReplyEnd,
    ReplyInterrupted,
    ReplyText,
    TimingMark,
    TurnCancelled,
    UserTranscript,
)
from avatarchat.engine.speculation import SPECULATION_DROPPED
from avatarchat.engine.handler import Handler, HandlerOptions, SessionInfo

log = logging.getLogger(__name__)

#: An OpenAI-style chat message: ``{"role": "user", "content": "..."}``.
Message = dict[str, str]

#: What the user hears when the model produced nothing at all.
FALLBACK_REPLY = "Sorry, I have no answer to that."
INTERRUPTED_MARK = "[interrupted]"
#: Characters of a reply kept in history (about 40 tokens).
MAX_REMEMBERED_CHARS = 160
#: How many unanswered questions a context remembers for barge-in (bounded: never grows).
_MAX_ASKED = 8
#: How many unheard questions a continuation carries (the oldest go first).
_MAX_UNHEARD = 2


_LABEL = re.compile(r"\s*([A-Za-z]{1,16})\s*:")
_MAYBE_LABEL = re.compile(r"\s*[A-Za-z]{0,16}\s*")
_NAMED = re.compile(r"\b(?:named|called|name is)\s+([A-Z][A-Za-z]{0,15})\b")
_ROLE_NAMES = frozenset({"assistant", "ai", "bot", "answer", "response", "reply"})


def speaker_names(system_prompt: str) -> frozenset[str]:
    """Lower-case names a model may write as a speaker label before its reply: the roles,
    and the persona's name when the prompt gives one ("... named Ava")."""
    return _ROLE_NAMES | {m.lower() for m in _NAMED.findall(system_prompt)}


async def without_speaker_label(deltas: AsyncGenerator[str, None], names: frozenset[str]) -> AsyncGenerator[str, None]:
    """``deltas`` less a leading "Ava:" or "Assistant:" (small models write one now and
    then, and the voice would say it). Holds back at most the first word until its colon
    is seen or ruled out; TTS waits for a whole clause anyway, so nobody hears the wait."""
    held: list[str] | None = []  # the deltas of the first word, until it is known
    async with aclosing(deltas) as inner:  # closing this closes the generation at once
        async for delta in inner:
            if held is None:
                yield delta
                continue
            held.append(delta)
            head = "".join(held)
            label = _LABEL.match(head)
            if label is None and _MAYBE_LABEL.fullmatch(head) and len(head) <= 24:
                continue
            if label is not None and label.group(1).lower() in names:
                held = [head[label.end():]]
            for piece in held:
                if piece:
                    yield piece
            held = None
    for piece in held or ():
        yield piece


# Chinese marks end a sentence with no space after them ("北京。它是…").
_SENTENCE_END = re.compile(r"[.!?…][\"')\]]*(?=\s|$)|[。！？][”’」』）)]*")


def complete_sentences(text: str) -> str:
    """``text`` up to the end of its last full sentence (all of it if none ends)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]] if ends else text


@dataclass
class ChatContext:
    """One session's conversation state. Used only by its stage's tasks (the worker and the
    control lane's ``on_control``), both on the event loop, so no locking.

    ``history`` holds the last ``settings.history_turns`` exchanges as (user, reply) pairs;
    older ones fall off. ``asked`` maps the turns whose reply has not completed to what the
    user said, so barge-in can pass it to ``ChatLLM.record_interrupted``.
    """

    session: SessionInfo
    history: deque[tuple[str, str]] = field(init=False)
    asked: dict[int, str] = field(default_factory=dict)
    #: The remembered exchange of each recent completed turn, so a reply the user cut off
    #: while it still played can be taken back (``retract``) and remembered as heard.
    answered: dict[int, tuple[str, str]] = field(default_factory=dict)
    #: Questions whose reply was dropped before the user heard a word of it, because they
    #: went on talking: the next question is asked as their continuation.
    unheard: list[str] = field(default_factory=list)
    #: Why the last generation stopped ("stop", "length"…), set by ``stream`` when it knows.
    finish_reason: str | None = None
    #: Prompt tokens the last generation had to read (the rest came from a cache), set by
    #: ``stream`` when the backend says.
    prompt_tokens_read: int | None = None

    def __post_init__(self) -> None:
        self.history = deque(maxlen=self.session.settings.history_turns)

    @property
    def system_prompt(self) -> str:
        return self.session.settings.system_prompt

    def messages(self, user_text: str) -> list[Message]:
        """System prompt, the remembered exchanges, then ``user_text``: the request to send."""
        messages: list[Message] = []
        if self.system_prompt.strip():
            messages.append({"role": "system", "content": self.system_prompt})
        for user, reply in self.history:
            messages.append({"role": "user", "content": user})
            messages.append({"role": "assistant", "content": reply})
        messages.append({"role": "user", "content": user_text})
        return messages

    def question(self, user_text: str) -> str:
        """What the model is asked for ``user_text``: it continues any ``unheard`` questions
        ("... around the pond." then "What kind of dog was it?" make one question)."""
        return " ".join([*self.unheard, user_text]).strip()

    def add(self, user_text: str, reply: str, turn: int | None = None) -> None:
        """Remember one exchange (the deque drops the oldest beyond ``history_turns``).

        A long reply is remembered by its first sentences only: every remembered token is
        read again before each later answer, and that wait is the user's.
        """
        if len(reply) > MAX_REMEMBERED_CHARS:
            reply = complete_sentences(reply[:MAX_REMEMBERED_CHARS]).strip() or reply[:MAX_REMEMBERED_CHARS]
        exchange = (user_text, reply)
        self.history.append(exchange)
        if turn is not None:
            self.answered[turn] = exchange
            while len(self.answered) > _MAX_ASKED:
                del self.answered[next(iter(self.answered))]

    def retract(self, turn: int) -> str | None:
        """Forget the completed exchange of ``turn`` if it is still in history; returns
        what the user asked then (None if the turn's exchange is not remembered)."""
        exchange = self.answered.pop(turn, None)
        if exchange is None:
            return None
        for i in range(len(self.history) - 1, -1, -1):
            if self.history[i] is exchange:
                del self.history[i]
                return exchange[0]
        return None

    def remember_question(self, turn: int, user_text: str) -> None:
        self.asked[turn] = user_text
        while len(self.asked) > _MAX_ASKED:
            del self.asked[next(iter(self.asked))]


OptionsT = TypeVar("OptionsT", bound=HandlerOptions)


class ChatLLM(Handler[OptionsT]):
    """Base of the LLM handlers: accepts final ``UserTranscript``s, emits the streamed reply.

    Per final transcript ``handle`` yields ``TimingMark("llm_start")``, then
    ``TimingMark("llm_first_token")`` right before the first ``ReplyText``, one ``ReplyText``
    per non-empty delta, and ``ReplyEnd`` whose text is the concatenation of the deltas.
    Leading whitespace of the reply is dropped (it would only delay the first real word), and
    so is a leading speaker label such as "Ava:" (``without_speaker_label``).
    An empty transcript yields only ``ReplyEnd(turn, "")``. Exceptions from ``stream``
    propagate; the engine turns them into an ``ErrorEvent`` and history stays unchanged.
    """

    stage: ClassVar[str] = "llm"
    accepts: ClassVar[tuple[type[Event], ...]] = (UserTranscript,)
    # The transcript goes on to the client, which shows what it heard.
    forwards: ClassVar[tuple[type[Event], ...]] = (UserTranscript,)
    # A cut reply: history keeps only what the user heard of it; a dropped speculation:
    # history forgets it.
    controls: ClassVar[tuple[type[Event], ...]] = (ReplyInterrupted, TurnCancelled)

    def create_context(self, session: SessionInfo) -> ChatContext:
        return ChatContext(session)

    async def prefill(self, ctx: ChatContext, messages: list[Message]) -> None:
        """Read ``messages`` ahead of the final transcript, so that the reply later pays
        only for the words that differ. Default: nothing (a remote server may not cache)."""

    @abstractmethod
    def stream(self, ctx: ChatContext, messages: list[Message]) -> AsyncGenerator[str, None]:
        """Yield the reply's text deltas for ``messages``.

        Must stop the underlying generation promptly when closed or cancelled (in a
        ``finally``), and raise an exception with a message a user can act on when it fails.
        """

    async def handle(self, ctx: ChatContext, event: Event) -> AsyncIterator[Event]:
        assert isinstance(event, UserTranscript)
        turn, user_text = event.turn, event.text.strip()
        if not event.final:
            # The reply waits for the final transcript, which mostly begins with the words
            # of this one: reading them now takes them off the wait at the end of the turn.
            # Not for a pause's transcript: its final mostly follows at once, and would
            # then wait for the prefill's token.
            if user_text and event.speech_end is None:
                try:
                    await self.prefill(ctx, ctx.messages(ctx.question(user_text)))
                except Exception:  # only a head start was lost; the reply will say more
                    log.warning("llm %s: prefill failed on turn %s", self.name, turn, exc_info=True)
            return
        if not user_text and not ctx.unheard:
            yield ReplyEnd(turn, "")
            return
        # After a reply dropped unheard, even a turn of noise gets the question answered.

        user_text = ctx.question(user_text)
        ctx.unheard.clear()
        ctx.remember_question(turn, user_text)
        yield TimingMark(turn, "llm_start", at=ctx.session.clock.now())
        parts: list[str] = []
        ctx.finish_reason = None
        names = speaker_names(ctx.system_prompt)
        async with aclosing(without_speaker_label(self.stream(ctx, ctx.messages(user_text)), names)) as deltas:
            async for delta in deltas:
                if not parts:
                    delta = delta.lstrip()
                if not delta:
                    continue
                if not parts:
                    yield TimingMark(turn, "llm_first_token", at=ctx.session.clock.now())
                parts.append(delta)
                yield ReplyText(turn, delta)

        if not parts:
            log.info("llm %s gave an empty reply on turn %s; saying the fallback", self.name, turn)
            yield TimingMark(turn, "llm_first_token", at=ctx.session.clock.now())
            parts.append(FALLBACK_REPLY)
            yield ReplyText(turn, FALLBACK_REPLY)
        reply = "".join(parts)
        truncated = ctx.finish_reason == "length"
        # Only a completed reply becomes history: a cancelled one never reaches this line.
        # A reply cut at the token cap is remembered up to its last full sentence, so the
        # model does not learn to trail off.
        ctx.asked.pop(turn, None)
        ctx.add(user_text, (complete_sentences(reply) if truncated else reply).strip(), turn)
        yield ReplyEnd(turn, reply, truncated=truncated)

    def record_interrupted(self, ctx: ChatContext, user_text: str, heard_text: str) -> None:
        """Add an interrupted exchange: what the user asked and the part of the reply they heard.

        The reply is marked ``[interrupted]`` so the model knows it was cut off.
        """
        heard = heard_text.strip()
        ctx.add(user_text.strip(), f"{heard} {INTERRUPTED_MARK}" if heard else INTERRUPTED_MARK)

    def record_cut(self, ctx: ChatContext, turn: int, heard_text: str, *, continued: bool = False) -> bool:
        """The reply of ``turn`` was cut off after the user heard ``heard_text``: remember
        the exchange as heard (``record_interrupted``). Works both while the reply was
        still being generated (its question is in ``ctx.asked``) and after it completed
        (its whole exchange, already in history, is taken back first). ``continued``: the
        user went on talking; if they heard nothing of the reply, their question is carried
        into the next one instead (``ChatContext.unheard``). Returns False if the turn is
        unknown (never asked, or forgotten)."""
        user_text = ctx.asked.pop(turn, None)
        if user_text is None:
            user_text = ctx.retract(turn)
        if user_text is None:
            return False
        if continued and not heard_text.strip():
            ctx.unheard = [*ctx.unheard, user_text][-_MAX_UNHEARD:]
        else:
            self.record_interrupted(ctx, user_text, heard_text)
        return True

    def on_control(self, ctx: ChatContext, event: Event) -> list[Event]:
        """``ReplyInterrupted``: remember the exchange as heard (``record_cut``). A
        speculation dropped unheard (``engine.speculation``): forget it, as if never asked."""
        if isinstance(event, TurnCancelled):
            if event.reason == SPECULATION_DROPPED:
                ctx.asked.pop(event.turn, None)
                ctx.retract(event.turn)
            return []
        assert isinstance(event, ReplyInterrupted)
        if not self.record_cut(ctx, event.turn, event.heard_text, continued=event.continued):
            log.info("llm %s: turn %s was cut but is not in history", self.name, event.turn)
        return []

    def cancel_turn(self, ctx: Any, turn: int) -> None:
        # Nothing buffered: cancelling the handle() task closes the stream, which stops
        # the generation. ``ctx.asked`` keeps the question for barge-in.
        pass
