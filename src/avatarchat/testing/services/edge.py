"""A local Microsoft Edge read-aloud server: what ``edge-tts`` talks to, on loopback.

The read-aloud service behind Edge's "Read aloud" (``speech.platform.bing.com``) has no
public API reference of its own. What this server implements is the wire format the
maintained client, ``edge-tts`` (``edge_tts/communicate.py``, ``voices.py``), sends and
accepts, which is the message framing of Microsoft's Speech service WebSocket protocol
(the Speech SDK's ``src/common.speech/WebsocketMessageFormatter.ts``, MIT, public):

- ``GET /consumer/speech/synthesize/readaloud/voices/list?trustedclienttoken=…`` → the
  voices as JSON (``Name``, ``ShortName``, ``Gender``, ``Locale``, ``SuggestedCodec``,
  ``FriendlyName``, ``Status``, ``VoiceTag``).
- ``GET /consumer/speech/synthesize/readaloud/edge/v1?TrustedClientToken=…&ConnectionId=…
  &Sec-MS-GEC=…&Sec-MS-GEC-Version=…`` → a WebSocket. A wrong token (or the
  ``reject_key`` fault) is an HTTP 403 with a ``Date`` header, on which edge-tts corrects
  its clock skew and retries once, as against the service.
- Client text messages are header lines (``Name:value`` CRLF), a blank line, a body:
  ``Path:speech.config`` (JSON: ``context.synthesis.audio.metadataoptions`` with
  ``wordBoundaryEnabled``/``sentenceBoundaryEnabled``, and ``outputFormat``
  ``audio-24khz-48kbitrate-mono-mp3``), then ``Path:ssml`` (``X-RequestId``,
  ``Content-Type:application/ssml+xml``, an SSML ``<speak><voice name=…><prosody …>``).
- The answer: text ``Path:turn.start``; then ``Path:audio.metadata`` text messages (JSON
  ``{"Metadata": [{"Type": "WordBoundary", "Data": {"Offset", "Duration", "text":
  {"Text", "Length", "BoundaryType"}}}]}``, Offset/Duration in 100 ns ticks, as the Speech
  SDK's WordBoundary event documents) interleaved with binary audio messages (a 2-byte
  big-endian header length, the headers ``Path:audio`` and ``Content-Type:audio/mpeg``,
  then MP3 bytes); a last binary ``Path:audio`` with no Content-Type and no data; then
  text ``Path:turn.end``.

Audio is real speech from the embedded voices (hibari; the Mandarin add-on for ``zh-*``
voices), MP3-encoded at 48 kbit/s CBR, 24 kHz mono like the service's. Word offsets are
times in the *decoded* audio (LAME's 576-sample priming plus the decoder's 529-sample
delay included), so a client that decodes the stream finds each word where it is said.
English words are timed by hibari's own phoneme durations; Chinese words (one per Han
character here; the service segments words itself) by spreading the clause's sounding
span over its characters. Audio goes out in messages of 0.25 s of sound, 4x faster than
real time, each word's boundary just before the message its sound starts in. Not observable
from here, so not claimed: the service's own message sizes, pace and interleaving (they move
``bench services``' figures, not the protocol), and what it does with an unknown voice
(this server closes the socket without audio, which edge-tts reports as ``NoAudioReceived``).

Faults (``LocalService.fault``): ``reject_key`` → 403 on the handshake and the voice list;
``server_error`` → HTTP 500 on both; ``slow_first_byte`` → ``turn.start`` comes
``slow_first_s`` late; ``drop_mid_stream`` → the TCP connection is cut after the first
audio message, with no close frame.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiohttp import web

from avatarchat.testing.services.base import LocalService, ServiceCase

READALOUD = "/consumer/speech/synthesize/readaloud"
#: The token edge-tts sends (public, in edge-tts and in Edge itself).
TRUSTED_CLIENT_TOKEN = "6A5AA1D4EAFF4E9FB37E23D68491D6F4"
RATE = 24000
BITRATE = 48000
#: LAME's encoder priming (one MPEG-2 frame) plus FFmpeg's MP3 decoder delay, in samples.
DECODED_DELAY = 576 + 529
TICKS = 10_000_000
#: Seconds of audio per binary audio message.
PIECE_S = 0.25
#: How much faster than real time the audio is sent (the service streams as it synthesizes).
PACE = 4.0

_VOICES = (
    ("en-US", "EmmaMultilingualNeural", "Female", "Emma"),
    ("en-US", "AriaNeural", "Female", "Aria"),
    ("en-US", "GuyNeural", "Male", "Guy"),
    ("en-GB", "SoniaNeural", "Female", "Sonia"),
    ("zh-CN", "XiaoxiaoNeural", "Female", "Xiaoxiao"),
    ("zh-CN", "YunxiNeural", "Male", "Yunxi"),
)


def voice_list() -> list[dict[str, Any]]:
    """The voices this server has, in the service's list format."""
    return [
        {
            "Name": f"Microsoft Server Speech Text to Speech Voice ({locale}, {name})",
            "ShortName": f"{locale}-{name}",
            "Gender": gender,
            "Locale": locale,
            "SuggestedCodec": "audio-24khz-48kbitrate-mono-mp3",
            "FriendlyName": f"Microsoft {friendly} Online (Natural) - {locale}",
            "Status": "GA",
            "VoiceTag": {"ContentCategories": ["General"], "VoicePersonalities": ["Friendly"]},
        }
        for locale, name, gender, friendly in _VOICES
    ]


@dataclass(frozen=True)
class Word:
    text: str
    start: float  # seconds in the decoded audio
    end: float


# --- what the server says ------------------------------------------------------------------

_VOICE_LOCK = threading.Lock()


@functools.cache
def _voice(chinese: bool) -> Any:
    if chinese:
        from avatarchat.handlers.tts.mandarin import MandarinOptions, MandarinTTS

        voice: Any = MandarinTTS(MandarinOptions())
    else:
        from avatarchat.handlers.tts.hibari import HibariOptions, HibariTTS

        voice = HibariTTS(HibariOptions())
    voice.load()
    return voice


@functools.lru_cache(maxsize=128)
def timed_speech(text: str, chinese: bool) -> tuple[np.ndarray, tuple[Word, ...]]:
    """``text`` said by an embedded voice at 24 kHz, with each word's span (seconds)."""
    with _VOICE_LOCK:
        voice = _voice(chinese)
    samples, phonemes = voice.synthesize(text)
    samples = np.asarray(samples, np.float32)
    if voice.sample_rate != RATE:
        from avatarchat.audio.resample import resample

        samples = resample(samples, voice.sample_rate, RATE)
    words = _han_words(text, phonemes) if chinese else _spaced_words(text, phonemes)
    return samples, tuple(words)


def warm(chinese: bool = False) -> None:
    """Load the voice the server answers with now, not during a client's first request."""
    timed_speech("Hello.", False)
    if chinese:
        timed_speech("你好。", True)


def _spaced_words(text: str, phonemes: Any) -> list[Word]:
    """Words of ``text`` timed by hibari's phoneme runs between spaces."""
    runs: list[tuple[float, float]] = []
    current: list[Any] = []
    for p in [*phonemes, None]:
        if p is None or p.phoneme == " ":
            sounds = [q for q in current if q.phoneme not in "ˈˌ" and q.phoneme.strip(".,!?;:—…\"'")]
            if sounds:
                runs.append((sounds[0].start, sounds[-1].end))
            current = []
        else:
            current.append(p)
    words = text.split()
    if not runs:
        return []
    if len(runs) != len(words):  # the G2P said a token as two words ("42"): share the span
        start, end = runs[0][0], runs[-1][1]
        step = (end - start) / len(words)
        runs = [(start + i * step, start + (i + 1) * step) for i in range(len(words))]
    return [Word(w.strip(".,!?;:\"'"), s, e) for w, (s, e) in zip(words, runs, strict=True)]


def _han_words(text: str, phonemes: Any) -> list[Word]:
    """One word per Han character, spread over the span the phonemes sound in."""
    chars = [c for c in text if "\u4e00" <= c <= "\u9fff"]
    if not chars or not phonemes:
        return []
    start, end = phonemes[0].start, phonemes[-1].end
    step = (end - start) / len(chars)
    return [Word(c, start + i * step, start + (i + 1) * step) for i, c in enumerate(chars)]


def mp3(samples: np.ndarray) -> bytes:
    """``samples`` (24 kHz mono float32) as a raw MP3 stream, 48 kbit/s CBR (LAME)."""
    import av

    enc = av.CodecContext.create("libmp3lame", "w")
    enc.sample_rate, enc.layout, enc.format, enc.bit_rate = RATE, "mono", "fltp", BITRATE
    enc.open()
    size = enc.frame_size
    out = bytearray()
    for i in range(0, len(samples), size):
        seg = np.zeros(size, np.float32)
        seg[: len(samples[i:i + size])] = samples[i:i + size]
        frame = av.AudioFrame.from_ndarray(seg[None, :], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = RATE, i
        for packet in enc.encode(frame):
            out += bytes(packet)
    for packet in enc.encode(None):
        out += bytes(packet)
    return bytes(out)


# --- the protocol --------------------------------------------------------------------------


def _text_message(path: str, body: str, request_id: str, content_type: str = "application/json; charset=utf-8") -> str:
    return f"X-RequestId:{request_id}\r\nContent-Type:{content_type}\r\nPath:{path}\r\n\r\n{body}"


def _audio_message(request_id: str, data: bytes) -> bytes:
    headers = f"X-RequestId:{request_id}\r\n" + ("Content-Type:audio/mpeg\r\n" if data else "") + "Path:audio\r\n"
    head = headers.encode()
    return len(head).to_bytes(2, "big") + head + data


def _boundary(word: Word) -> str:
    offset = round((word.start + DECODED_DELAY / RATE) * TICKS)
    return json.dumps({"Metadata": [{"Type": "WordBoundary", "Data": {
        "Offset": offset, "Duration": round((word.end - word.start) * TICKS),
        "text": {"Text": word.text, "Length": len(word.text), "BoundaryType": "WordBoundary"}}}]},
        ensure_ascii=False)


def parse_text_message(raw: str) -> tuple[dict[str, str], str]:
    """A protocol text message → (headers, body)."""
    head, _, body = raw.partition("\r\n\r\n")
    headers = dict(line.split(":", 1) for line in head.split("\r\n") if ":" in line)
    return headers, body


def parse_ssml(ssml: str) -> dict[str, str]:
    """The voice, prosody and text of edge-tts's SSML."""
    root = ET.fromstring(ssml)
    ns = {"s": "http://www.w3.org/2001/10/synthesis"}
    voice = root.find("s:voice", ns)
    prosody = voice.find("s:prosody", ns) if voice is not None else None
    return {
        "voice": voice.get("name", "") if voice is not None else "",
        "text": "".join(prosody.itertext()) if prosody is not None else "",
        **({k: prosody.get(k, "") for k in ("rate", "volume", "pitch")} if prosody is not None else {}),
    }


def _rejected(service: LocalService, request: web.Request, token_key: str) -> web.Response | None:
    if service.fault == "server_error":
        return web.Response(status=500, text="Internal Server Error")
    if service.fault == "reject_key" or request.query.get(token_key) != TRUSTED_CLIENT_TOKEN \
            or not request.query.get("Sec-MS-GEC"):
        return web.Response(status=403, text="Forbidden")
    return None


def app(service: LocalService) -> web.Application:
    """The read-aloud service's two endpoints (see the module docstring)."""

    async def voices(request: web.Request) -> web.StreamResponse:
        await service.arrive()
        service.record("http", request.path, request.headers, dict(request.query))
        refused = _rejected(service, request, "trustedclienttoken")
        await service.arrive()  # the answer's way back
        return refused or web.json_response(voice_list())

    async def synthesize(request: web.Request) -> web.StreamResponse:
        await service.arrive()
        service.record("http", request.path, request.headers, dict(request.query))
        refused = _rejected(service, request, "TrustedClientToken")
        await service.arrive()  # the answer's way back (the 101 or the refusal)
        if refused is not None:
            return refused
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await _converse(service, request, ws)
        return ws

    application = web.Application()
    application.router.add_get(f"{READALOUD}/voices/list", voices)
    application.router.add_get(f"{READALOUD}/edge/v1", synthesize)
    return application


async def _converse(service: LocalService, request: web.Request, ws: web.WebSocketResponse) -> None:
    """Read the client's messages; answer each ``ssml`` with one turn; note the close."""
    loop = asyncio.get_running_loop()
    # Messages are stamped as they come and handled delay_s later: two sent together arrive
    # together (a network's latency), not one delay after the other.
    inbox: asyncio.Queue[tuple[float, str] | None] = asyncio.Queue()

    async def read() -> None:
        async for msg in ws:
            if isinstance(msg.data, str):
                inbox.put_nowait((loop.time() + service.delay_s, msg.data))
        service.record("ws", "closed", {}, {"turn_end_sent": ended.is_set()})
        inbox.put_nowait(None)

    config: dict[str, Any] = {}
    turn: asyncio.Task[None] | None = None
    ended = asyncio.Event()  # set as turn.end goes out: before the client can have it
    reader = asyncio.create_task(read())
    try:
        while (item := await inbox.get()) is not None:
            due, raw = item
            await asyncio.sleep(max(0.0, due - loop.time()))
            headers, body = parse_text_message(raw)
            path = headers.get("Path", "")
            if path == "speech.config":
                config = json.loads(body)
                service.record("ws", path, headers, config)
            elif path == "ssml":
                service.record("ws", path, headers, {"ssml": body, **parse_ssml(body)})
                turn = asyncio.create_task(
                    _turn(service, request, ws, headers.get("X-RequestId", ""), body, config, ended))
    finally:
        for task in (reader, turn):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


async def _turn(service: LocalService, request: web.Request, ws: web.WebSocketResponse, request_id: str,
                ssml: str, config: dict[str, Any], ended: asyncio.Event) -> None:
    said = parse_ssml(ssml)
    known = {v["Name"]: v for v in voice_list()}
    await service.first_byte()
    if said["voice"] not in known:
        await ws.close()
        return
    chinese = known[said["voice"]]["Locale"].startswith("zh")
    loop = asyncio.get_running_loop()
    samples, words = await loop.run_in_executor(None, timed_speech, said["text"], chinese)
    data = await loop.run_in_executor(None, mp3, samples)
    options = config.get("context", {}).get("synthesis", {}).get("audio", {}).get("metadataoptions", {})
    send = service.sender(ws.send_str)
    try:
        await _answer(service, request, ws, send, request_id, data,
                      list(words) if options.get("wordBoundaryEnabled") == "true" else [], ended)
    finally:
        await send.close()


async def _answer(service: LocalService, request: web.Request, ws: web.WebSocketResponse, send: Any,
                  request_id: str, data: bytes, words: list[Word], ended: asyncio.Event) -> None:
    """One turn's messages: turn.start, boundaries before the audio they start in, turn.end."""
    send.send(_text_message("turn.start", json.dumps({"context": {"serviceTag": uuid.uuid4().hex}}), request_id))
    step = int(PIECE_S * BITRATE / 8)
    for k, at in enumerate(range(0, len(data), step)):
        until = (at + step) * 8 / BITRATE
        while words and words[0].start + DECODED_DELAY / RATE < until:
            send.send(_text_message("audio.metadata", _boundary(words.pop(0)), request_id))
        send.send(_audio_message(request_id, data[at:at + step]), ws.send_bytes)
        if k == 0 and service.fault == "drop_mid_stream":
            await send.drain()
            assert request.transport is not None
            request.transport.abort()  # no close frame: the network went away
            return
        await asyncio.sleep(PIECE_S / PACE)
    send.send(_audio_message(request_id, b""), ws.send_bytes)

    async def last(message: str) -> None:
        ended.set()
        await ws.send_str(message)

    send.send(_text_message("turn.end", "{}", request_id), last)
    await send.drain()


def bench_cases() -> list[ServiceCase]:
    """Edge TTS against this server, for ``avatarchat bench services``."""
    return [
        ServiceCase(name="edge", stage="tts", handler="edge", server=app,
                    options=lambda svc: {"url": svc.ws_url, "voice": "en-US-EmmaMultilingualNeural"},
                    measure="first_audio"),
        ServiceCase(name="edge-zh", stage="tts", handler="edge", server=app,
                    options=lambda svc: {"url": svc.ws_url, "voice": "zh-CN-XiaoxiaoNeural"},
                    measure="first_audio", language="zh"),
    ]
