"""The avatar's voice over WebRTC, Opus-encoded here rather than by aiortc.

aiortc encodes every outgoing audio frame the same way: a new ``AudioFrame``, its level
measured in Python, a mono-to-stereo resample, and a hop to the default executor for the
encoder, 50 times a second per session, whether the avatar speaks or not. Between replies
(most of a session's life) the frames are digital silence, and an Opus encoder fed silence
settles within a frame or two on one 3-byte packet that it then repeats bit for bit. So
this track encodes on the loop (~0.1 ms a frame) and, once the silence has lasted
``SETTLE_FRAMES``, sends that packet again instead of encoding: the browser receives what
the encoder would have produced for the silence. The encoder's rate control then saw fewer
silent frames, so the next reply's packets differ a little from encoding every frame; they
decode to the same voice within ~59 dB (tests/test_opus_voice.py). RTP timestamps stay
``n * 960`` (media time, as before), so the page's clock of what it hears is unchanged.

Cost measured with ``bench load`` (docs/PERFORMANCE.md, issue 11): what an idle
client-drawn session costs the server.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from avatarchat.server.tracks import AUDIO_RATE, AvatarAudioTrack

#: Silent frames encoded before the encoder's output is taken as settled (it settles in 1-2).
SETTLE_FRAMES = 10
#: Mono speech needs no more (aiortc sends a stereo 96 kb/s stream of the same mono voice).
BIT_RATE = 64000
TIME_BASE = Fraction(1, AUDIO_RATE)


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


class OpusVoiceTrack(MediaStreamTrack):
    """``source``'s frames as Opus packets (aiortc sends a track's packets as they are).
    Where the answer settled on another codec (a client without Opus), set ``opus`` false:
    the track then hands aiortc the frames to encode, as ``source`` would."""

    kind = "audio"

    def __init__(self, source: AvatarAudioTrack) -> None:
        super().__init__()
        self._source = source
        self._encoder = opus_encoder()
        self._silent_run = 0  # consecutive all-zero frames, encoded or not
        self._settled: bytes | None = None  # the encoder's packet for silence, once settled
        self.encoded = 0  # frames that went through the encoder (the rest were repeats)
        self.opus = True

    def stop(self) -> None:
        super().stop()
        self._source.stop()

    async def recv(self) -> av.Packet | av.AudioFrame:
        if not self.opus:
            return await self._source.recv()
        n, samples = await self._source.next_samples()
        silent = not samples.any()
        self._silent_run = self._silent_run + 1 if silent else 0
        if silent and self._settled is not None:
            data = self._settled
        else:
            self._settled = None
            data = self._encode(n, samples)
            if self._silent_run >= SETTLE_FRAMES:
                self._settled = data
        packet = av.Packet(data)
        packet.pts = n * len(samples)
        packet.time_base = TIME_BASE
        return packet

    def _encode(self, n: int, samples: np.ndarray) -> bytes:
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = n * len(samples)
        frame.time_base = TIME_BASE
        packets = self._encoder.encode(frame)
        self.encoded += 1
        # libopus gives one packet per 20 ms frame, with no delay to flush.
        return b"".join(bytes(p) for p in packets)
