"""The avatar's voice over WebRTC, Opus-encoded here rather than by aiortc.

aiortc encodes every outgoing audio frame the same way, 50 times a second per session,
whether the avatar speaks or not: the frame's level measured by a Python loop over its
960 samples (RFC 6464's header extension), a mono-to-stereo resample, and a hop to the
default executor for the encoder. Between replies (most of a session's life) the frames
are digital silence, and an Opus encoder fed silence settles within a frame or two on one
3-byte packet that it then repeats bit for bit. So the voice is encoded here, on the loop
(~0.1 ms a frame), its level taken with numpy, and once a silence has lasted
``SETTLE_FRAMES`` the settled packet is sent again instead of encoding: the browser gets
what the encoder would have produced for the silence. The encoder's rate control then saw
fewer silent frames, so the next reply's packets differ a little from encoding every frame;
they decode to the same voice within ~59 dB (tests/test_opus_voice.py). RTP timestamps
stay ``n * 960`` (media time, as before), so the page's clock of what it hears is unchanged.

With ``dtx`` (``server.voice_dtx``, on by default) a settled silence between replies is not
sent at all: one DTX packet (the settled packet's TOC byte alone, a frame of 0 bytes) every
``DTX_EVERY`` frames, and nothing in between, until reply audio arrives, which wakes the
sender at once (``AvatarAudioTrack.wait_idle``: a future and a timer, no task). The browser
takes the gaps as DTX, not loss: it conceals nothing, and its clock of the voice (the played
packets' RTP timestamps) keeps running (tests/test_client_avatar_browser.py).

aiortc 1.16 (pinned with av) takes pre-encoded packets from a track but then sends them
without the audio level, which pages read (``getSynchronizationSources().audioLevel``). So
the peer's audio sender is given a ``_next_encoded_frame`` of its own (``send_from``), the
one step of aiortc's send loop that fetches and encodes a frame. An aiortc without that
step is left to encode the track's frames itself, with a warning.
"""

from __future__ import annotations

import logging
import math
from fractions import Fraction
from typing import Any

import av
import numpy as np
from aiortc import rtcrtpsender

from avatarchat.server.tracks import AUDIO_RATE, AvatarAudioTrack

log = logging.getLogger(__name__)

#: Silent frames encoded before the encoder's output is taken as settled (it settles in 1-2).
SETTLE_FRAMES = 10
#: Mono speech needs no more (aiortc sends a stereo 96 kb/s stream of the same mono voice).
BIT_RATE = 64000
TIME_BASE = Fraction(1, AUDIO_RATE)
#: RFC 6464: level in -dBov, 0 (loudest) to 127 (silence).
SILENT_LEVEL = 127
#: Between replies (``dtx``) one DTX packet goes out every this many frames (200 ms), none
#: in between: the page's clock of what it hears reads the played packets' RTP timestamps
#: and holds still after 300 ms without one (web/avatar/face.js).
DTX_EVERY = 10


def opus_encoder() -> av.AudioCodecContext:
    """A libopus encoder for 20 ms mono s16 frames at 48 kHz, tuned for speech like aiortc's."""
    codec = av.CodecContext.create("libopus", "w")
    assert isinstance(codec, av.AudioCodecContext)
    codec.sample_rate = AUDIO_RATE
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = BIT_RATE
    codec.time_base = TIME_BASE
    codec.options = {"application": "voip"}
    return codec


def audio_level(samples: np.ndarray) -> int:
    """RFC 6464's level of s16 ``samples``: -dBov rounded, 0..127 (127: silence)."""
    x = samples.astype(np.float64)
    rms = math.sqrt(float(np.dot(x, x)) / max(len(x), 1)) / 32767.0
    if rms <= 0.0:
        return SILENT_LEVEL
    return min(SILENT_LEVEL, max(0, round(-20.0 * math.log10(rms))))


class OpusVoice:
    """``source``'s frames as Opus packets: ``next_packet`` gives each frame's payload,
    RTP timestamp (``n * 960``) and RFC 6464 level when the frame is due."""

    def __init__(self, source: AvatarAudioTrack, *, dtx: bool = False) -> None:
        self.source = source
        self.dtx = dtx
        self._encoder = opus_encoder()
        self._silent_run = 0  # consecutive all-zero frames, encoded or not
        self._settled: bytes | None = None  # the encoder's packet for silence, once settled
        self.encoded = 0  # frames that went through the encoder (the rest were repeats)
        self._dtx_sent = False  # the last packet was a DTX packet

    async def next_packet(self) -> tuple[bytes, int, int]:
        if self._dtx_sent and not self.source.replying:
            await self.source.wait_idle(DTX_EVERY - 1)
        n, samples = await self.source.next_samples()
        silent = not samples.any()
        self._silent_run = self._silent_run + 1 if silent else 0
        if silent and self._settled is not None:
            # With DTX, the packet's TOC byte alone: a frame of 0 bytes, which decoders
            # (and the browser's jitter buffer) take as discontinuous transmission.
            self._dtx_sent = self.dtx
            return self._settled[:1] if self.dtx else self._settled, n * len(samples), SILENT_LEVEL
        self._settled = None
        self._dtx_sent = False
        data = self._encode(n, samples)
        if self._silent_run >= SETTLE_FRAMES:
            self._settled = data
        return data, n * len(samples), audio_level(samples)

    def _encode(self, n: int, samples: np.ndarray) -> bytes:
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = n * len(samples)
        frame.time_base = TIME_BASE
        packets = self._encoder.encode(frame)
        self.encoded += 1
        # libopus gives one packet per 20 ms frame, with no delay to flush.
        return b"".join(bytes(p) for p in packets)


def send_from(sender: Any, voice: OpusVoice) -> bool:
    """Make aiortc's audio ``sender`` (of ``voice.source``) send ``voice``'s packets, with
    their audio level. Returns False where this aiortc has no such step: the sender then
    encodes the track's frames itself, as before."""
    encoded_frame: Any = getattr(rtcrtpsender, "RTCEncodedFrame", None)
    step = getattr(sender, "_next_encoded_frame", None)
    if encoded_frame is None or step is None or getattr(sender, "track", None) is not voice.source:
        log.warning("this aiortc cannot take pre-encoded voice with its level; aiortc encodes it")
        return False

    async def next_encoded_frame(codec: Any) -> Any:
        payload, timestamp, level = await voice.next_packet()
        if not getattr(sender, "_enabled", True):
            return None  # as aiortc: a disabled sender reads the track and drops the frame
        # aiortc writes the extension as -level (its levels are in dBov, <= 0).
        return encoded_frame([payload], timestamp, -level)

    sender._next_encoded_frame = next_encoded_frame
    return True
