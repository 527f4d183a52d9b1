"""Microsoft Edge's read-aloud voices (free, online) through the maintained ``edge-tts``.

Each clause is one ``edge_tts.Communicate`` call with ``boundary="WordBoundary"``: the
service streams MP3 (24 kHz, 48 kbit/s) and a WordBoundary event per word (offset and
duration in 100 ns ticks). The MP3 is decoded as it comes (PyAV) and yielded in pieces
of about ``piece_s``; each word's span is filled with the phonemes espeak-ng says the
word has (its relative durations, stretched onto Edge's span), so the avatar's mouth
follows the words Edge timed; a voice whose language espeak-ng lacks gives no phonemes
and the mouth follows the audio. A piece carries the phonemes that start in it: a word
whose boundary comes only after its audio went out is not timed (a piece with no word
at all is mouthed from its audio).

The endpoint. edge-tts always connects to ``wss://speech.platform.bing.com/…`` and checks
TLS against certifi's roots only; its one seam is ``connector=`` (an aiohttp connector).
``url`` keeps that default (edge-tts's own connection, TLS verified) or names
``ws://HOST:PORT``: every connection edge-tts opens (the synthesis WebSocket, the voice
list) then goes to HOST:PORT in the clear, with the same request line and headers (Host:
speech.platform.bing.com). That serves a relay you run (one that forwards the requests to
the service over TLS itself) and the local protocol server the tests use
(``avatarchat.testing.services.edge``). A resolver mapping Bing's name to 127.0.0.1
cannot do it: the TLS handshake would still need a certificate for
speech.platform.bing.com from a public CA. So TLS, and the service itself, are not what
the tests exercise: edge-tts's protocol code is. No edge_tts module is patched.
``proxy`` is edge-tts's own (an HTTP proxy, TLS end to end).

Errors: a 403 (the service's clock token refused: edge-tts retries once after fixing
its clock skew), an unreachable host, no audio within ``first_audio_timeout_s``, or a
connection that closes before the clause's ``turn.end`` raise out of ``handle``; the
engine ends the turn and shows the session's ``voice_fallback_reply``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from contextlib import aclosing, asynccontextmanager
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
import edge_tts
import numpy as np
from edge_tts.constants import WSS_URL
from edge_tts.exceptions import NoAudioReceived
from edge_tts.typing import TTSChunk
from pydantic import Field, field_validator, model_validator

from avatarchat.engine.events import PhonemeTiming
from avatarchat.engine.handler import HandlerLoadError, HandlerOptions, register, run_blocking
from avatarchat.handlers.tts.base import StreamingTTS, Synthesis, TTSOptions
from avatarchat.handlers.tts.edge_audio import Mp3Stream, espeak_voice_for, word_phonemes

log = logging.getLogger(__name__)

#: The service edge-tts talks to (its fixed URL, less the query it adds).
EDGE_URL = WSS_URL.split("?", 1)[0]
TICKS = 10_000_000


class EdgeOptions(TTSOptions):
    """``tts: {handler: edge, …}``."""

    #: A voice's short name (``edge-tts --list-voices``): ``en-US-EmmaMultilingualNeural``,
    #: ``en-US-AriaNeural``, ``zh-CN-XiaoxiaoNeural``, ``zh-CN-YunxiNeural``…
    voice: str = "en-US-EmmaMultilingualNeural"
    rate: str = Field(default="+0%", pattern=r"^[+-]\d+%$")
    volume: str = Field(default="+0%", pattern=r"^[+-]\d+%$")
    pitch: str = Field(default="+0Hz", pattern=r"^[+-]\d+Hz$")
    #: The service (default), or ``ws://HOST:PORT`` of a relay or a local protocol server.
    url: str = EDGE_URL
    #: An HTTP proxy for edge-tts (``http://host:port``); "" = none (or $HTTPS_PROXY).
    proxy: str = ""
    connect_timeout_s: float = Field(default=5.0, gt=0, le=60)
    #: From the request until the clause's first audio.
    first_audio_timeout_s: float = Field(default=10.0, gt=0, le=120)
    #: Seconds of audio per piece yielded (the first piece waits for the second one).
    piece_s: float = Field(default=0.2, ge=0.05, le=5.0)
    #: At load, fetch the voice list: the service is reachable and the voice exists.
    check: bool = True

    @field_validator("url")
    @classmethod
    def _relay_or_service(cls, url: str) -> str:
        if url.rstrip("/") == EDGE_URL:
            return EDGE_URL
        parts = urlsplit(url)
        if parts.scheme == "ws" and parts.hostname and parts.port and parts.path in ("", "/"):
            return url
        raise ValueError(f"{EDGE_URL} (the service) or ws://HOST:PORT (a relay that speaks its protocol); "
                         "edge-tts always requests the service's own path")

    @model_validator(mode="after")
    def _proxy_for_the_service(self) -> EdgeOptions:
        if self.proxy and self.url != EDGE_URL:
            raise ValueError("proxy is for reaching the service itself; a ws:// relay is reached directly")
        return self


class RelayConnector(aiohttp.BaseConnector):
    """Opens every connection to ``host:port`` in the clear, whatever the request's URL.

    aiohttp's extension point for a connector (``_create_connection``, as its own
    ``UnixConnector`` implements it). The request is sent unchanged: edge-tts's URL, query
    and headers reach the relay as they would reach the service.

    A session closing it leaves it open: on a 403, edge-tts retries in a new session with
    the connector it was given (it closed the first session, and with it an ordinary
    connector: the retry failed with "Session is closed"). Its owner calls ``shut``."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(force_close=True)  # no pooling: nothing stays open between requests
        self._host, self._port = host, port

    def close(self, *, abort_ssl: bool = False) -> Awaitable[None]:
        return asyncio.sleep(0)

    async def shut(self) -> None:
        """Close it for good (after the edge-tts call it served)."""
        await super().close()

    async def _create_connection(self, req: Any, traces: Any, timeout: aiohttp.ClientTimeout) -> Any:
        try:
            async with asyncio.timeout(timeout.sock_connect):
                _, protocol = await self._loop.create_connection(self._factory, self._host, self._port)
        except OSError as exc:
            raise aiohttp.ClientConnectorError(req.connection_key, exc) from exc
        return protocol


@register
class EdgeTTS(StreamingTTS[EdgeOptions]):
    """Edge read-aloud voices, streamed per clause, 24 kHz, phonemes from word boundaries."""

    name: ClassVar[str] = "edge"
    Options: ClassVar[type[HandlerOptions]] = EdgeOptions
    sample_rate: ClassVar[int] = 24000

    def __init__(self, options: EdgeOptions) -> None:
        super().__init__(options)
        self._espeak_voice: str | None = None

    def models(self) -> list[Any]:
        return []

    @property
    def where(self) -> str:
        """Where requests go, for messages."""
        via = f" via proxy {self.options.proxy}" if self.options.proxy else ""
        return f"{self.options.url}{via}"

    @asynccontextmanager
    async def connector(self) -> AsyncIterator[RelayConnector | None]:
        """The connector of one edge-tts call, shut after it: None = edge-tts's own."""
        if self.options.url == EDGE_URL:
            yield None
            return
        parts = urlsplit(self.options.url)
        assert parts.hostname is not None and parts.port is not None
        relay = RelayConnector(parts.hostname, parts.port)
        try:
            yield relay
        finally:
            await relay.shut()

    def load(self) -> None:
        self._espeak_voice = espeak_voice_for(self.options.voice)
        if self._espeak_voice is None:
            log.info("edge: espeak-ng has no language for %s: its mouth follows the audio", self.options.voice)
        if self.options.check:
            # A loop of its own, on a thread of its own: load may be called from any thread.
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, self._check()).result()

    async def _check(self) -> None:
        o = self.options
        try:
            async with asyncio.timeout(o.connect_timeout_s + o.first_audio_timeout_s), self.connector() as relay:
                voices = await edge_tts.list_voices(connector=relay, proxy=o.proxy or None)
        except aiohttp.ClientResponseError as exc:
            raise HandlerLoadError(_refused(exc.status, self.where)) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise HandlerLoadError(f"cannot reach Edge TTS at {self.where}: {_reason(exc)}") from exc
        names = {v["ShortName"] for v in voices} | {v["Name"] for v in voices}
        if o.voice not in names:
            locale = "-".join(o.voice.split("-")[:2])
            near = sorted(v["ShortName"] for v in voices if v["Locale"] == locale)[:4]
            some = near or [v for v in ("en-US-EmmaMultilingualNeural", "zh-CN-XiaoxiaoNeural")
                            if v in names]
            raise HandlerLoadError(f"unknown Edge voice {o.voice!r}: {len(voices)} voices, e.g. {', '.join(some)} "
                                   "(list them: edge-tts --list-voices)")

    def _communicate(self, text: str, relay: RelayConnector | None) -> edge_tts.Communicate:
        o = self.options
        return edge_tts.Communicate(
            text, o.voice, rate=o.rate, volume=o.volume, pitch=o.pitch, boundary="WordBoundary",
            connector=relay, proxy=o.proxy or None,
            # edge-tts takes whole seconds; our own deadlines below are exact.
            connect_timeout=math.ceil(o.connect_timeout_s), receive_timeout=math.ceil(o.first_audio_timeout_s),
        )

    async def synthesize_stream(self, text: str, first: bool) -> AsyncGenerator[Synthesis, None]:
        """The clause's audio in pieces of about ``piece_s`` as Edge streams it, each with
        the phonemes of the words that start in it (seconds from the piece's start)."""
        async with self.connector() as relay:
            async with aclosing(self._stream(self._communicate(text, relay))) as pieces:
                async for piece in pieces:
                    yield piece

    async def _stream(self, communicate: edge_tts.Communicate) -> AsyncGenerator[Synthesis, None]:
        """Decoded audio in pieces of ``piece_s`` or more, with the phonemes starting in each."""
        decoder = Mp3Stream(self.sample_rate)
        words: list[tuple[str, float, float]] = []  # (text, start, end) in the clause's audio
        spread = 0  # words already turned into phonemes
        phonemes: list[PhonemeTiming] = []  # in the clause's audio
        buffered: list[np.ndarray] = []
        done_s = 0.0  # audio yielded so far
        async with aclosing(self._chunks(communicate)) as chunks:
            async for chunk in chunks:
                if chunk["type"] == "WordBoundary":
                    start = chunk["offset"] / TICKS
                    words.append((chunk["text"], start, start + chunk["duration"] / TICKS))
                    continue
                if chunk["type"] != "audio":
                    continue
                buffered.append(decoder.feed(chunk["data"]))
                size = sum(len(b) for b in buffered)
                if size < self.options.piece_s * self.sample_rate:
                    continue
                spread = await self._spread(words, spread, phonemes)
                piece, buffered = np.concatenate(buffered), []
                yield piece, _within(phonemes, done_s, done_s + size / self.sample_rate)
                done_s += size / self.sample_rate
        buffered.append(decoder.close())
        rest = np.concatenate(buffered)
        if len(rest):
            await self._spread(words, spread, phonemes)
            yield rest, _within(phonemes, done_s, math.inf)

    async def _chunks(self, communicate: edge_tts.Communicate) -> AsyncGenerator[TTSChunk, None]:
        """edge-tts's chunks of one clause, the first audio due ``first_audio_timeout_s``
        after the request; its failures raised as one line saying where."""
        o = self.options
        deadline: float | None = asyncio.get_running_loop().time() + o.first_audio_timeout_s
        async with aclosing(communicate.stream()) as chunks:
            it = aiter(chunks)
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(it)
                except StopAsyncIteration:
                    break
                except aiohttp.ClientResponseError as exc:
                    raise ConnectionError(_refused(exc.status, self.where)) from exc
                except aiohttp.ClientError as exc:  # a read timeout mid-stream included
                    raise ConnectionError(f"Edge TTS at {self.where}: {_reason(exc)}") from exc
                except TimeoutError:
                    raise TimeoutError(f"Edge TTS sent no audio within {o.first_audio_timeout_s:g} s "
                                       f"({self.where})") from None
                except NoAudioReceived as exc:  # the service ended the turn without a sound
                    raise RuntimeError(f"Edge TTS at {self.where} said nothing in voice {o.voice!r} "
                                       "(a voice it does not have?)") from exc
                if chunk["type"] == "audio":
                    deadline = None
                yield chunk
        # edge-tts ends its stream quietly when the socket closes; only the service's
        # turn.end resets this count (a clause is one request: far below its 4096-byte split).
        if communicate.state["chunk_audio_bytes"]:
            raise ConnectionError(f"Edge TTS at {self.where} closed the connection mid-clause (no turn.end)")

    async def _spread(self, words: list[tuple[str, float, float]], spread: int,
                      phonemes: list[PhonemeTiming]) -> int:
        """Phonemes (espeak-ng's, stretched onto each word's span) of ``words[spread:]``,
        appended to ``phonemes``; returns how many words are spread now."""
        if self._espeak_voice is None or spread == len(words):
            return len(words)
        phonemes.extend(await run_blocking(word_phonemes, self._espeak_voice, tuple(words[spread:])))
        return len(words)


def _within(phonemes: list[PhonemeTiming], start: float, end: float) -> tuple[PhonemeTiming, ...]:
    """The phonemes that start in [start, end), in seconds from ``start``."""
    return tuple(PhonemeTiming(p.phoneme, p.start - start, p.end - start)
                 for p in phonemes if start <= p.start < end)


def _refused(status: int, where: str) -> str:
    if status == 403:
        return (f"Edge TTS refused the request (HTTP 403 from {where}): its clock token (Sec-MS-GEC) was not "
                "accepted; check the system clock, then update edge-tts (pip install -U edge-tts)")
    return f"Edge TTS answered HTTP {status} ({where})"


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__

