"""``s2s: qwen_omni``: Qwen-Omni realtime (Alibaba Cloud Bailian / DashScope), the user's
speech in, the reply's text and speech out, in place of ASR + LLM + TTS.

Driven by the official ``dashscope`` SDK (``OmniRealtimeConversation``; see ``omni_link``)
over the realtime WebSocket API. Endpoints (``url``): ``wss://dashscope.aliyuncs.com/api-ws/v1/realtime``
(mainland China, the default) or ``wss://dashscope-intl.aliyuncs.com/api-ws/v1/realtime``
(international); a proxy or a test server works the same way. The key is ``api_key`` or
``$DASHSCOPE_API_KEY``.

Our VAD decides the turn: the session is configured with ``turn_detection`` off; the
utterance (16 kHz 16-bit PCM) is appended as it comes (at each pause the VAD reports, so
little is left to send at its end), committed at ``SpeechEnded``, and a response created. A typed message is a ``conversation.item.create`` of ``input_text``. One
connection per session, opened as soon as the user starts to speak (``SpeechStarted``, so
the end of the utterance does not wait for a handshake; at a typed message otherwise) and
again after it dropped; the service keeps the conversation, and a new connection is told
the last exchanges in its instructions.

What comes out per turn (``S2SHandler``'s promises): the service's transcript of the
user as a final ``UserTranscript``; ``response.audio_transcript.delta`` as ``ReplyText``;
``response.audio.delta`` as ``ReplyAudio`` (24 kHz, contiguous). The transcript runs ahead
of the audio, so a chunk's ``text`` is only set on the last chunk of a stretch of audio (the
audio that came before the next transcript delta, or the reply's end): what the user heard
of a cut reply never claims words not yet said. Marks: ``asr_start`` (audio sent),
``asr_final`` (its transcript), ``llm_start`` (``response.create``), ``llm_first_token``
(the first text or audio of the reply), ``tts_first_audio``; the metrics' spans use them.

A cut (``ReplyInterrupted``): the response in progress is cancelled (``response.cancel``)
and, since the API has no ``conversation.item.truncate``, the service's history still
holds the whole reply: the next ``response.create`` carries instructions that say which
words the user actually heard.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from avatarchat.audio.resample import resample
from avatarchat.engine.events import (
    Event,
    ReplyAudio,
    ReplyEnd,
    ReplyInterrupted,
    ReplyText,
    SpeechEnded,
    SpeechPaused,
    SpeechSoFar,
    SpeechStarted,
    TimingMark,
    UserTranscript,
)
from avatarchat.engine.handler import HandlerLoadError, HandlerOptions, S2SHandler, SessionInfo, register
from avatarchat.handlers.s2s.omni_link import Closed, OmniError, OmniLink, SessionConfig, api_key, error_text

log = logging.getLogger(__name__)

#: Samples of input audio per ``input_audio_buffer.append`` (0.5 s at 16 kHz).
APPEND_SAMPLES = 8000
#: How long a new turn waits for a cancelled response's ``response.done``.
SETTLE_S = 2.0
#: After the reply, how long its user transcript may still take.
TRANSCRIPT_WAIT_S = 2.0


class QwenOmniOptions(HandlerOptions):
    url: str = "wss://dashscope.aliyuncs.com/api-ws/v1/realtime"
    #: "" = ``$DASHSCOPE_API_KEY``.
    api_key: str = ""
    model: str = "qwen3-omni-flash-realtime"
    voice: str = "Cherry"
    #: The service's model for the transcript of the user's speech.
    transcription_model: str = "gummy-realtime-v1"
    #: The rate of the PCM the service sends (Qwen3-Omni: 24000).
    output_sample_rate: int = Field(default=24000, ge=8000, le=48000)
    connect_timeout_s: float = Field(default=5.0, gt=0, le=120)
    #: From ``response.create`` to the first audio, and at most between two events after it.
    first_audio_timeout_s: float = Field(default=10.0, gt=0, le=300)
    #: At load, open and close one session (the key, URL, model and voice are checked).
    check: bool = True
    #: Send the utterance so far at each pause the VAD reports (``SpeechPaused``,
    #: ``SpeechSoFar``), so the end of the turn sends only the rest before the commit.
    stream_input: bool = True


@dataclass
class _Turn:
    """One turn's response as it streams."""

    turn: int
    item_id: str | None = None  # the user's committed audio item
    response_id: str | None = None
    created: bool = False  # response.create was sent
    done: bool = False  # its response.done was seen
    heard: str | None = None  # the user's transcript
    text: str = ""  # the reply's transcript so far
    segment: str = ""  # transcript not yet put on a chunk
    pending: np.ndarray | None = None  # the newest audio, held for the segment's text
    segment_audio: bool = False  # audio came since the segment's text began
    offset: float = 0.0
    spoke: bool = False
    first: bool = False


@dataclass
class OmniContext:
    """Per-session state: the connection, what was said (for a new connection's
    instructions) and a note about the last cut reply."""

    session: SessionInfo
    link: OmniLink | None = None
    #: Opening the connection, started when the user begins to speak.
    connecting: asyncio.Task[OmniLink] | None = None
    #: A response was abandoned (cancelled) before its response.done was seen.
    unsettled: bool = False
    #: A ``response.cancel`` went out whose answer may still come: an ``error`` if the
    #: response had already ended. The link sends in order and the service answers in
    #: order, so that answer comes before anything about the next turn's input.
    cancel_sent: bool = False
    history: list[tuple[str, str]] = field(default_factory=list)
    cut_note: str = ""
    #: The turn being answered, or the last one answered.
    current: _Turn | None = None
    #: The turn whose audio is in the service's input buffer, not yet committed, and that audio.
    early_turn: int | None = None
    early: np.ndarray | None = None


@register
class QwenOmniS2S(S2SHandler[QwenOmniOptions]):
    """See the module docstring."""

    name = "qwen_omni"
    Options = QwenOmniOptions
    sample_rate: ClassVar[int] = 24000
    accepts: ClassVar[tuple[type[Event], ...]] = (SpeechSoFar, SpeechPaused, SpeechEnded, UserTranscript)
    # A typed message goes on to the client, which shows it.
    forwards: ClassVar[tuple[type[Event], ...]] = (UserTranscript,)
    # The user starts to speak: the connection opens meanwhile. A cut reply: see on_control.
    controls: ClassVar[tuple[type[Event], ...]] = (SpeechStarted, ReplyInterrupted)

    def load(self) -> None:
        if not self.options.check:
            return
        try:
            asyncio.run(self._check())
        except OmniError as exc:
            raise HandlerLoadError(str(exc)) from None

    async def _check(self) -> None:
        link = await self._open(self.session_settings.system_prompt)
        link.close()

    async def _open(self, instructions: str) -> OmniLink:
        o = self.options
        config = SessionConfig(o.voice, instructions, o.transcription_model)
        return await OmniLink.open(o.url, api_key(o.api_key), o.model, config, o.connect_timeout_s)

    def create_context(self, session: SessionInfo) -> OmniContext:
        return OmniContext(session)

    def close_context(self, ctx: OmniContext) -> None:
        if ctx.connecting is not None and not ctx.connecting.done():
            ctx.connecting.cancel()
        if ctx.link is not None:
            ctx.link.close()
            ctx.link = None

    # -- a turn ----------------------------------------------------------------------------

    async def handle(self, ctx: OmniContext, event: Event) -> AsyncIterator[Event]:
        if isinstance(event, SpeechPaused | SpeechSoFar):
            if self.options.stream_input:  # a head start only: a failure here is logged
                await self._append(ctx, await self._link(ctx), event.turn, event.audio)
            return
        if isinstance(event, UserTranscript):
            if not event.final:
                return
            if not event.text.strip():
                yield ReplyEnd(event.turn, "")
                return
        assert isinstance(event, SpeechEnded | UserTranscript)
        if isinstance(event, SpeechEnded) and len(event.audio) == 0:
            yield ReplyEnd(event.turn, "")
            return
        clock = ctx.session.clock
        link = await self._link(ctx)
        await self._settle(ctx, link)
        state = ctx.current = _Turn(event.turn)
        try:
            if isinstance(event, SpeechEnded):
                yield TimingMark(event.turn, "asr_start", at=clock.now())
                await self._append(ctx, link, event.turn, event.audio, commit=True)
            else:
                state.heard = event.text.strip()
                await link.call(link.conversation.create_item, {
                    "type": "message", "role": "user", "content": [{"type": "input_text", "text": state.heard}]})
            instructions, ctx.cut_note = self._instructions(ctx), ""
            yield TimingMark(event.turn, "llm_start", at=clock.now())
            state.created = True
            await link.call(link.conversation.create_response, instructions)
            async for out in self._stream(ctx, link, state):
                yield out
        finally:
            if state.created and not state.done:
                # Cancelled (a cut, cancel_turn) or failed mid-stream: stop the response.
                ctx.unsettled = True
                if not link.closed:
                    link.send(link.conversation.cancel_response)
                    ctx.cancel_sent = True
        self._remember(ctx, state.heard or "", state.text.strip())
        yield ReplyEnd(state.turn, state.text.strip())

    def _remember(self, ctx: OmniContext, user: str, reply: str) -> None:
        keep = ctx.session.settings.history_turns
        ctx.history = [*ctx.history, (user, reply)][-keep:] if keep else []

    async def _append(self, ctx: OmniContext, link: OmniLink, turn: int, audio: np.ndarray,
                      commit: bool = False) -> None:
        """Put ``turn``'s utterance (so far) in the service's input buffer: only what is new
        if the buffer holds its beginning already, else (another turn's audio, a blip the
        VAD dropped) after clearing it; then commit it if ``commit``."""
        sent = ctx.early if ctx.early_turn == turn else None
        if sent is not None and len(audio) >= len(sent) and np.array_equal(audio[:len(sent)], sent):
            new, clear = audio[len(sent):], False
        else:
            new, clear = audio, ctx.early_turn is not None
        ctx.early_turn, ctx.early = None, None  # unknown until the sends are done
        await link.call(_send_audio, link, new, clear, commit)
        if not commit:
            ctx.early_turn, ctx.early = turn, np.array(audio, np.float32)

    def _instructions(self, ctx: OmniContext) -> str:
        base = ctx.session.settings.system_prompt
        return f"{base}\n\n{ctx.cut_note}".strip() if ctx.cut_note else base

    async def _link(self, ctx: OmniContext) -> OmniLink:
        """The session's open connection: the one being opened since the user began to
        speak, or a new one (the first turn, or the last connection dropped)."""
        if ctx.link is not None and not ctx.link.closed:
            return ctx.link
        connecting = self._warm(ctx)
        # Shielded: a turn cancelled meanwhile leaves the connection to the next one.
        return await asyncio.shield(connecting)

    def _warm(self, ctx: OmniContext) -> asyncio.Task[OmniLink]:
        """Start opening the connection unless it is open or being opened: at
        ``SpeechStarted``, so the utterance's end does not wait for a handshake."""
        if ctx.connecting is None or ctx.connecting.done():
            ctx.connecting = asyncio.get_running_loop().create_task(self._connect(ctx), name="qwen-omni-connect")
            # A failure is the next turn's to report; retrieved here so it is never "unretrieved".
            ctx.connecting.add_done_callback(lambda t: t.cancelled() or t.exception())
        return ctx.connecting

    async def _connect(self, ctx: OmniContext) -> OmniLink:
        if ctx.link is not None:
            if not ctx.link.closed:
                return ctx.link
            ctx.link.close()
        ctx.link, ctx.unsettled, ctx.cancel_sent = None, False, False
        ctx.early_turn = ctx.early = None  # a new session's input buffer is empty
        instructions = ctx.session.settings.system_prompt
        if ctx.history:  # a new connection: the service forgot the conversation
            said = "\n".join(f"User: {u}\nYou: {r}" for u, r in ctx.history if u or r)
            instructions = f"{instructions}\n\nThe conversation so far:\n{said}"
        ctx.link = await self._open(instructions)
        return ctx.link

    async def _settle(self, ctx: OmniContext, link: OmniLink) -> None:
        """After a cancelled response: wait (bounded) for its ``response.done``, so its
        late events are not taken for the new turn's and the service is free."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_S
        while ctx.unsettled:
            try:
                event = await asyncio.wait_for(link.events.get(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                log.info("qwen_omni: no response.done for a cancelled response in %.1f s; going on", SETTLE_S)
                break
            if isinstance(event, Closed):
                raise OmniError(f"the Qwen-Omni connection to {link.url} closed ({event.reason or event.code})")
            if event.get("type") == "error" and ctx.cancel_sent:
                ctx.cancel_sent = False  # the response had ended before the cancel came
            if event.get("type") in ("response.done", "error"):
                break
        ctx.unsettled = False
        while not link.events.empty():  # what is left belongs to earlier turns
            if isinstance(link.events.get_nowait(), Closed):
                raise OmniError(f"the Qwen-Omni connection to {link.url} closed")

    async def _stream(self, ctx: OmniContext, link: OmniLink, state: _Turn) -> AsyncIterator[Event]:
        clock = ctx.session.clock
        loop = asyncio.get_running_loop()
        wait = self.options.first_audio_timeout_s
        while not state.done:
            try:
                event = await asyncio.wait_for(link.events.get(), wait)
            except TimeoutError:
                what = "no audio" if not state.spoke else "nothing more"
                raise TimeoutError(f"Qwen-Omni sent {what} within {wait:g} s") from None
            if isinstance(event, Closed):
                raise OmniError(f"the Qwen-Omni connection to {link.url} closed mid-reply "
                                f"(code {event.code}{': ' + event.reason if event.reason else ''})")
            for out in self._on_event(ctx, state, event, clock.now()):
                yield out
        # The reply is done; its user transcript may still be on the way.
        deadline = loop.time() + TRANSCRIPT_WAIT_S
        while state.heard is None and state.item_id is not None and loop.time() < deadline:
            try:
                event = await asyncio.wait_for(link.events.get(), deadline - loop.time())
            except TimeoutError:
                break
            if isinstance(event, Closed):
                break
            for out in self._on_event(ctx, state, event, clock.now()):
                yield out

    def _on_event(self, ctx: OmniContext, state: _Turn, event: dict[str, Any], now: float) -> list[Event]:
        kind = str(event.get("type", ""))
        turn = state.turn
        if kind == "error":
            if ctx.cancel_sent:  # the answer to the last turn's cancel, not about this turn
                ctx.cancel_sent = False
                log.info("qwen_omni: a late cancel found no response: %s", error_text(event))
                return []
            raise OmniError(f"Qwen-Omni error: {error_text(event)}")
        if kind in ("input_audio_buffer.committed", "conversation.item.created", "response.created"):
            ctx.cancel_sent = False  # the service is past the cancel: its answer came, if any
        if kind == "input_audio_buffer.committed":
            state.item_id = event.get("item_id")
        elif kind == "conversation.item.input_audio_transcription.completed":
            if event.get("item_id") == state.item_id and state.heard is None:
                state.heard = str(event.get("transcript") or "").strip()
                return [TimingMark(turn, "asr_final", at=now), UserTranscript(turn, state.heard, final=True)]
        elif kind == "conversation.item.input_audio_transcription.failed":
            if event.get("item_id") == state.item_id:
                log.warning("qwen_omni: the service could not transcribe turn %s: %s", turn, event.get("error"))
                state.heard = ""
        elif kind == "response.created":
            if state.response_id is None:
                state.response_id = (event.get("response") or {}).get("id")
        elif kind.startswith("response.") and event.get("response_id", (event.get("response") or {}).get("id")) \
                not in (None, state.response_id):
            pass  # a late event of an earlier (cancelled) response
        elif kind in ("response.audio_transcript.delta", "response.text.delta"):
            return self._text(state, str(event.get("delta") or ""), now)
        elif kind == "response.audio.delta":
            return self._audio(state, str(event.get("delta") or ""), now)
        elif kind == "response.done":
            response = event.get("response") or {}
            state.done = True
            out = self._flush(state)
            if response.get("status") == "failed":
                details = (response.get("status_details") or {}).get("error") or {}
                raise OmniError(f"Qwen-Omni failed the response: {details.get('message') or 'no reason given'}")
            return out
        return []

    def _first(self, state: _Turn, now: float) -> list[Event]:
        if state.first:
            return []
        state.first = True
        return [TimingMark(state.turn, "llm_first_token", at=now)]

    def _text(self, state: _Turn, delta: str, now: float) -> list[Event]:
        if not delta:
            return []
        if not state.text:
            delta = delta.lstrip()
            if not delta:
                return []
        out = self._first(state, now)
        if state.segment_audio:
            # Audio came since this stretch's text began: that audio said it.
            out += self._flush(state)
        state.text += delta
        state.segment += delta
        out.append(ReplyText(state.turn, delta))
        return out

    def _audio(self, state: _Turn, b64: str, now: float) -> list[Event]:
        samples = np.frombuffer(base64.b64decode(b64), "<i2").astype(np.float32) / 32768.0
        if self.options.output_sample_rate != self.sample_rate:
            samples = resample(samples, self.options.output_sample_rate, self.sample_rate)
        if len(samples) == 0:
            return []
        out = self._first(state, now)
        if not state.spoke:
            state.spoke = True
            out.append(TimingMark(state.turn, "tts_first_audio", at=now))
        if state.pending is not None:
            out.append(self._chunk(state, state.pending, ""))
        state.pending = samples
        state.segment_audio = True
        return out

    def _flush(self, state: _Turn) -> list[Event]:
        """The held audio goes out with the stretch's text; the next stretch begins."""
        out: list[Event] = [self._chunk(state, state.pending, state.segment.strip())] if state.pending is not None else []
        state.pending = None
        if out:
            state.segment, state.segment_audio = "", False
        return out

    def _chunk(self, state: _Turn, samples: np.ndarray, text: str) -> ReplyAudio:
        chunk = ReplyAudio(state.turn, samples, self.sample_rate, state.offset, text=text)
        state.offset += chunk.duration
        return chunk

    # -- control ---------------------------------------------------------------------------

    def on_control(self, ctx: OmniContext, event: Event) -> list[Event]:
        """``SpeechStarted``: open the connection now (``_warm``). A cut reply: the next
        response is told what the user heard of it (the service keeps the whole reply in
        its history; the API cannot truncate it)."""
        if isinstance(event, SpeechStarted):
            if ctx.link is None or ctx.link.closed:
                self._warm(ctx)
            return []
        assert isinstance(event, ReplyInterrupted)
        heard = event.heard_text.strip()
        state = ctx.current
        if state is None or state.turn != event.turn:
            return []  # not this session's latest reply: nothing it says is ahead of it
        ctx.cut_note = (f"Your previous reply was cut off: the user heard only \"{heard}\"." if heard else
                        "Your previous reply was cut off before the user heard any of it.")
        cut = (state.heard or "", f"{heard} [interrupted]".strip())
        if state.done and ctx.history and ctx.history[-1] == (state.heard or "", state.text.strip()):
            ctx.history[-1] = cut
        elif not state.done:
            self._remember(ctx, *cut)
        return []


def _send_audio(link: OmniLink, audio: np.ndarray, clear: bool, commit: bool) -> None:
    """Blocking (the link's sender): clear the input buffer if ``clear``, append ``audio`` as
    16-bit PCM, then commit it if ``commit``."""
    if clear:
        link.conversation.clear_appended_audio()
    pcm = (np.clip(np.asarray(audio, np.float32), -1.0, 1.0) * 32767.0).astype("<i2")
    for i in range(0, len(pcm), APPEND_SAMPLES):
        link.conversation.append_audio(base64.b64encode(pcm[i:i + APPEND_SAMPLES].tobytes()).decode("ascii"))
    if commit:
        link.conversation.commit()
