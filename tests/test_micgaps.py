"""The microphone's gaps under DTX (server/micgaps.py): silence put back from the RTP
timestamps and from the wall clock, in virtual time."""

from __future__ import annotations

import numpy as np
from aiortc import RTCPeerConnection
from aiortc.sdp import SessionDescription

from avatarchat.server.micgaps import (
    FILL_S,
    FRAME,
    GRACE_S,
    HOLD_S,
    LATE_S,
    QUIET_FRAMES,
    RATE,
    STALL_S,
    MicGaps,
    ask_for_mic_dtx,
)

LOUD = np.full(FRAME, 0.3, np.float32)
QUIET = np.full(FRAME, 0.001, np.float32)
T = FRAME / RATE  # 20 ms


class Stream:
    """A sender at RTP timestamp ``origin``: frames at 20 ms steps, arriving ``lag`` late."""

    def __init__(self, origin: int = 123_456) -> None:
        self.gaps = MicGaps()
        self.origin = origin
        self.out: list[np.ndarray] = []

    def send(self, k: int, samples: np.ndarray, lag: float = 0.0) -> np.ndarray:
        chunk = self.gaps.frame((self.origin + k * FRAME) % (1 << 32), samples, k * T + lag)
        self.out.append(chunk)
        return chunk

    def tick(self, now: float) -> np.ndarray | None:
        chunk = self.gaps.fill(now)
        if chunk is not None:
            self.out.append(chunk)
        return chunk

    def word_then_quiet(self) -> int:
        """A loud frame, then ``QUIET_FRAMES`` quiet ones: the index of the last."""
        self.send(0, LOUD)
        for k in range(1, 1 + QUIET_FRAMES):
            self.send(k, QUIET)
        return QUIET_FRAMES

    @property
    def delivered(self) -> int:
        return sum(len(c) for c in self.out)


def test_a_steady_stream_passes_untouched() -> None:
    s = Stream()
    for k in range(50):
        assert s.send(k, LOUD if k % 3 else QUIET) is not None
        assert len(s.out[-1]) == FRAME
    assert s.delivered == 50 * FRAME
    assert s.gaps.filled_from_clock == s.gaps.filled_from_timestamps == 0


def test_a_lost_packet_comes_back_as_silence_from_its_timestamp() -> None:
    s = Stream()
    s.send(0, LOUD)
    s.send(1, LOUD)
    chunk = s.send(3, LOUD)  # frame 2 lost
    assert len(chunk) == 2 * FRAME and not chunk[:FRAME].any() and (chunk[FRAME:] == LOUD).all()
    assert s.delivered == 4 * FRAME


def test_mid_speech_the_clock_waits_for_a_stall_not_a_frame() -> None:
    s = Stream()
    s.send(0, LOUD)
    wake = s.gaps.wake_at()
    assert wake is not None and abs(wake - (T + STALL_S)) < 1e-9
    assert s.tick(T + STALL_S - 0.001) is None  # a frame 100 ms late is still awaited
    assert s.tick(T + STALL_S) is not None


def test_dtx_silence_is_given_as_it_passes_and_squares_with_the_next_timestamp() -> None:
    s = Stream()
    k = 0
    for k in range(20):
        s.send(k, LOUD)
    for k in range(20, 20 + QUIET_FRAMES):
        s.send(k, QUIET)
    last = k  # then DTX: nothing for 400 ms
    given = []
    now = last * T
    while now < (last + 20) * T:
        now += 0.005
        if (chunk := s.tick(now)) is not None:
            given.append((now, len(chunk)))
    # Each frame of silence is given HOLD_S after it would have come.
    for i, (at, n) in enumerate(given, start=1):
        assert n == FRAME
        assert (last + i) * T + HOLD_S <= at < (last + i) * T + HOLD_S + 0.005 + 1e-9
    # The comfort-noise packet 20 frames on: only what the clock has not given yet comes before it.
    chunk = s.send(last + 20, QUIET, lag=0.0)
    assert s.delivered == (last + 21) * FRAME
    assert len(chunk) == (19 - len(given)) * FRAME + FRAME


def test_silence_given_for_a_late_frame_is_taken_from_the_next_gap() -> None:
    s = Stream()
    k0 = s.word_then_quiet()
    # Frame k0+1 is 30 ms late: the clock gives two frames meanwhile.
    assert s.tick((k0 + 1) * T + 0.03) is not None
    lead = s.delivered - (k0 + 1) * FRAME
    assert lead == 2 * FRAME
    late = s.send(k0 + 1, QUIET, lag=0.03)
    assert len(late) == FRAME  # the frame itself, nothing cut, nothing added
    # The stream runs ahead by the lead until a gap: a DTX gap of 5 frames gets 3.
    chunk = s.send(k0 + 7, QUIET, lag=0.03)
    assert len(chunk) == (5 - 2) * FRAME + FRAME
    assert s.delivered == (k0 + 8) * FRAME  # back on the sender's timeline


def test_a_late_wake_up_of_our_own_gives_frames_on_their_way_a_grace() -> None:
    s = Stream()
    k0 = s.word_then_quiet()
    due = s.gaps.wake_at()
    assert due is not None and abs(due - ((k0 + 1) * T + HOLD_S)) < 1e-9
    stalled = due + LATE_S + 0.1  # the loop was busy 150 ms
    assert s.tick(stalled) is None
    wake = s.gaps.wake_at()
    assert wake is not None and abs(wake - (stalled + GRACE_S)) < 1e-9
    for k in range(k0 + 1, k0 + 9):  # the frames were only held up: they come, no silence added
        assert len(s.send(k, QUIET, lag=stalled - k * T)) == FRAME
    assert s.delivered == (k0 + 9) * FRAME and s.gaps.filled_from_clock == 0


def test_an_idle_session_never_wakes_and_the_clock_stops_after_a_while() -> None:
    s = Stream()
    for k in range(100):
        s.send(k, QUIET)
    assert s.gaps.wake_at() is None  # never spoke: the sparse DTX packets suffice
    s.send(100, LOUD)
    for k in range(101, 101 + QUIET_FRAMES):
        s.send(k, QUIET)
    assert s.gaps.wake_at() is not None
    late = 100 * T + FILL_S + 1.0
    assert s.tick(late) is None  # woken this late: our own stall, frames get a grace first
    assert s.tick(late + GRACE_S) is not None
    assert s.gaps.wake_at() is None
    assert s.delivered <= (100 * T + FILL_S) * RATE + FRAME


def test_timestamps_wrap_and_a_new_origin_is_not_a_silence() -> None:
    s = Stream(origin=(1 << 32) - 2 * FRAME)
    for k in range(4):
        s.send(k, LOUD)  # crosses 2**32
    chunk = s.send(6, LOUD)
    assert len(chunk) == 3 * FRAME  # two lost frames across the wrap
    s.gaps.frame(5, LOUD, 1.0)  # the sender restarted its timeline
    assert s.gaps.filled_from_timestamps == 2 * FRAME


def test_the_answer_asks_for_dtx_on_opus_only() -> None:
    answer = "\r\n".join([
        "v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 96 0", "a=rtpmap:96 opus/48000/2", "a=rtpmap:0 PCMU/8000",
        "m=video 9 UDP/TLS/RTP/SAVPF 97", "a=rtpmap:97 VP8/90000", "a=fmtp:97 max-fs=12288", "",
    ])
    out = ask_for_mic_dtx(answer)
    assert "a=rtpmap:96 opus/48000/2\r\na=fmtp:96 usedtx=1\r\na=rtpmap:0 PCMU/8000" in out
    assert out.count("usedtx") == 1 and "a=fmtp:97 max-fs=12288\r\n" in out
    assert ask_for_mic_dtx(out) == out
    with_fmtp = answer.replace("a=rtpmap:0", "a=fmtp:96 minptime=10;useinbandfec=1\r\na=rtpmap:0")
    assert "a=fmtp:96 minptime=10;useinbandfec=1;usedtx=1\r\n" in ask_for_mic_dtx(with_fmtp)


async def test_aiortc_takes_the_answer_that_asks_for_dtx() -> None:
    """The answer stays SDP that aiortc reads, parameter included (the bench's clients are
    aiortc, and ``bench.load_client`` sends DTX when asked)."""
    offerer, answerer = RTCPeerConnection(), RTCPeerConnection()
    try:
        offerer.addTransceiver("audio", direction="sendonly")
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        answer = ask_for_mic_dtx((await answerer.createAnswer()).sdp)
        opus = SessionDescription.parse(answer).media[0].rtp.codecs[0]
        assert opus.mimeType == "audio/opus" and str(opus.parameters.get("usedtx")) == "1"
    finally:
        await offerer.close()
        await answerer.close()
