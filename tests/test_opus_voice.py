"""The voice encoded here (server/opus.py): silence repeats the settled packet instead of
encoding; the stream is what encoding every frame gives, up to the next reply's rate
control (the same voice within 50 dB)."""

from __future__ import annotations


import av
import pytest
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from avatarchat.server.opus import SETTLE_FRAMES, SILENT_LEVEL, OpusVoice, audio_level, opus_encoder
from avatarchat.server.tracks import AUDIO_FRAME, AUDIO_RATE


def _script() -> list[np.ndarray]:
    """Idle, a reply (a gliding tone with a soft start and end), idle, a second reply, idle."""
    def reply(seconds: float, f0: float) -> list[np.ndarray]:
        n = int(seconds * AUDIO_RATE) // AUDIO_FRAME * AUDIO_FRAME
        t = np.arange(n) / AUDIO_RATE
        x = np.sin(2 * np.pi * (f0 + 80 * t) * t) * np.hanning(n) * 12000
        return list(x.astype(np.int16).reshape(-1, AUDIO_FRAME))

    quiet = [np.zeros(AUDIO_FRAME, np.int16)]
    return quiet * 40 + reply(0.5, 180) + quiet * 60 + reply(0.3, 240) + quiet * 25


class _Source(MediaStreamTrack):
    """Stands in for AvatarAudioTrack: scripted frames, no clock."""

    kind = "audio"

    def __init__(self, frames: list[np.ndarray]) -> None:
        super().__init__()
        self.frames, self.n = frames, 0

    async def next_samples(self) -> tuple[int, np.ndarray]:
        n, self.n = self.n, self.n + 1
        return n, self.frames[n]

    async def recv(self) -> av.AudioFrame:
        n, samples = await self.next_samples()
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = AUDIO_RATE, n * AUDIO_FRAME
        return frame



def _decode(packets: list[bytes]) -> np.ndarray:
    decoder = av.CodecContext.create("libopus", "r")
    assert isinstance(decoder, av.AudioCodecContext)
    decoder.sample_rate, decoder.layout, decoder.format = AUDIO_RATE, "mono", "s16"
    return np.concatenate([f.to_ndarray().reshape(-1) for p in packets for f in decoder.decode(av.Packet(p))])


async def test_silence_repeats_the_settled_packet_and_the_stream_is_what_encoding_all_gives() -> None:
    frames = _script()
    voice = OpusVoice(_Source(frames))  # type: ignore[arg-type]
    sent = [await voice.next_packet() for _ in frames]

    reference = opus_encoder()
    expected = []
    for n, samples in enumerate(frames):
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = AUDIO_RATE, n * AUDIO_FRAME
        expected.append(b"".join(bytes(p) for p in reference.encode(frame)))

    got = [payload for payload, _, _ in sent]
    second = 40 + 25 + 60  # the second reply's first frame
    assert got[:second] == expected[:second]  # the first reply, and every silence, exactly
    assert [ts for _, ts, _ in sent] == [n * AUDIO_FRAME for n in range(len(frames))]
    assert [level for _, _, level in sent] == [audio_level(f) for f in frames]
    # Only the frames with sound and the first SETTLE_FRAMES of each silence were encoded.
    silent_stretches = 3
    loud = sum(bool(f.any()) for f in frames)
    assert voice.encoded == loud + silent_stretches * SETTLE_FRAMES
    # What the browser decodes: silence where the script is silent, and the second reply
    # (whose rate control saw fewer silent frames) the same voice as encoding every frame.
    heard, reference_heard = _decode(got).astype(np.float64), _decode(expected).astype(np.float64)
    assert np.abs(heard[: 40 * AUDIO_FRAME]).max() == 0
    assert np.abs(heard[90 * AUDIO_FRAME: 120 * AUDIO_FRAME]).max() == 0
    reply = slice(second * AUDIO_FRAME, (second + 15) * AUDIO_FRAME)
    error = heard[reply] - reference_heard[reply]
    assert np.abs(reference_heard[reply]).max() > 5000
    assert 10 * np.log10((reference_heard[reply] ** 2).sum() / max((error ** 2).sum(), 1.0)) > 50


def test_audio_level_is_rfc_6464s() -> None:
    from aiortc.rtp import compute_audio_level_dbov  # what aiortc sends for a frame it encodes

    rng = np.random.default_rng(1)
    for scale in (0, 1, 30, 1000, 12000, 32767):
        samples = (rng.uniform(-1, 1, AUDIO_FRAME) * scale).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        assert audio_level(samples) == -compute_audio_level_dbov(frame)
    assert audio_level(np.zeros(AUDIO_FRAME, np.int16)) == SILENT_LEVEL


async def test_an_aiortc_sender_sends_the_packets_with_their_level() -> None:
    from aiortc import RTCPeerConnection
    from aiortc.rtcrtpsender import RTCEncodedFrame

    from avatarchat.server.opus import send_from

    frames = _script()[38:44]
    source = _Source(frames)
    pc = RTCPeerConnection()
    try:
        sender = pc.addTrack(source)
        assert send_from(sender, OpusVoice(source))  # type: ignore[arg-type]
        got = [await sender._next_encoded_frame(None) for _ in frames]
    finally:
        await pc.close()
    assert all(isinstance(f, RTCEncodedFrame) and len(f.payloads) == 1 for f in got)
    assert [f.timestamp for f in got] == [i * AUDIO_FRAME for i in range(len(frames))]
    assert [-f.audio_level for f in got] == [audio_level(f) for f in frames]
    assert got[0].audio_level == -SILENT_LEVEL and got[-1].audio_level > -60


def test_another_sender_is_left_to_encode() -> None:
    from avatarchat.server.opus import send_from

    class Elsewhere:  # an aiortc without the step
        track = None

    assert not send_from(Elsewhere(), OpusVoice(_Source([])))  # type: ignore[arg-type]


async def test_dtx_sends_a_toc_byte_every_200_ms_and_wakes_the_moment_a_reply_arrives() -> None:
    import asyncio

    from avatarchat.engine.events import ReplyAudio
    from avatarchat.server.opus import DTX_EVERY
    from avatarchat.server.tracks import FRAME_S, AvatarAudioTrack, MediaClock, Playout
    from avatarchat.testing import FakeClock

    clock = FakeClock()
    media = MediaClock(clock)
    playout = Playout(media)
    track = AvatarAudioTrack(media, playout)
    voice = OpusVoice(track, dtx=True)
    sent: list[tuple[float, bytes, int, int]] = []

    async def pump() -> None:
        while True:
            payload, ts, level = await voice.next_packet()
            sent.append((clock.now() - media.t0, payload, ts, level))

    task = asyncio.create_task(pump())
    try:
        await clock.advance(2.0)
        tasks_waiting = len(asyncio.all_tasks())
        dtx = [s for s in sent if len(s[1]) == 1]
        # SETTLE_FRAMES encoded silent frames, then one TOC byte every DTX_EVERY frames.
        assert len(sent) - len(dtx) == SETTLE_FRAMES
        assert [s[2] for s in dtx] == [(SETTLE_FRAMES + i * DTX_EVERY) * AUDIO_FRAME for i in range(len(dtx))]
        assert len(dtx) == (2.0 / FRAME_S - SETTLE_FRAMES) // DTX_EVERY + 1
        assert dtx[0][1] == sent[SETTLE_FRAMES - 1][1][:1] and all(s[3] == SILENT_LEVEL for s in dtx)
        assert tasks_waiting == len(asyncio.all_tasks())  # the wait holds no task of its own

        # A reply arrives 50 ms into a wait: its sound goes out at once, at the media time due.
        await clock.advance(0.05)
        arrived = clock.now() - media.t0
        tone = (np.sin(np.arange(4800) * 0.06) * 0.4).astype(np.float32)
        playout.add_audio(ReplyAudio(7, tone, 48000, 0.0, "hi", ()))
        await clock.advance(0.1)
        loud = [s for s in sent if s[3] < SILENT_LEVEL]
        assert loud, "the reply was not sent"
        assert loud[0][0] - arrived <= 2 * FRAME_S
        assert loud[0][2] == round(loud[0][0] / FRAME_S) * AUDIO_FRAME
    finally:
        task.cancel()
        track.stop()


async def test_a_burst_sends_a_replys_first_audio_at_once_on_a_media_clock_moved_on() -> None:
    import asyncio

    from avatarchat.engine.events import ReplyAudio
    from avatarchat.server.tracks import FRAME_S, AvatarAudioTrack, MediaClock, Playout
    from avatarchat.testing import FakeClock

    clock = FakeClock()
    media = MediaClock(clock)
    playout = Playout(media)
    playout.client_draws(lambda t: None)
    playout.burst_s = 0.1
    track = AvatarAudioTrack(media, playout)
    voice = OpusVoice(track, dtx=True)
    sent: list[tuple[float, int, int]] = []  # (engine time, RTP timestamp, level)

    async def pump() -> None:
        while True:
            _payload, ts, level = await voice.next_packet()
            sent.append((clock.now(), ts, level))

    def reply(turn: int) -> ReplyAudio:
        tone = (np.sin(np.arange(24000) * 0.06) * 0.4).astype(np.float32)  # 0.5 s
        return ReplyAudio(turn, tone, 48000, 0.0, "hi", ())

    task = asyncio.create_task(pump())
    try:
        await clock.advance(0.0)
        t0 = media.t0
        for turn, lead in ((1, 0.1), (2, 0.2)):  # each reply after an idle voice moves on 100 ms
            await clock.advance(2.013)  # idle in DTX
            arrived, before = clock.now(), len(sent)
            playout.add_audio(reply(turn))
            playout.end(turn)
            await clock.advance(0.0)
            burst = [s for s in sent[before:] if s[0] == arrived]
            # The next 100 ms of frames at once (and the frame due now, if it had not gone),
            # every one the reply's.
            assert round(0.1 / FRAME_S) <= len(burst) <= round(0.1 / FRAME_S) + 1
            assert all(level < SILENT_LEVEL for _, _, level in burst)
            stamps = [ts for _, ts, _ in sent[before:]]
            assert stamps == sorted(set(stamps))  # RTP timestamps never go back or repeat
            assert media.t0 == pytest.approx(t0 - lead)
            await clock.advance(0.1)
            # Then in real time again: one frame every 20 ms.
            assert len([s for s in sent if arrived < s[0] <= arrived + 0.1 + 1e-9]) == 5
    finally:
        task.cancel()
        track.stop()
