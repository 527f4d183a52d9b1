"""The microphone's receive buffer: aiortc holds every incoming Opus packet until four
newer ones have arrived ("prefetch"), 80 ms of delay on every word the user says, before
the VAD hears it. Whether a packet comes late or out of order does not depend on it: the
buffer releases packets only in sequence either way; the prefetch only delays them.

aiortc 1.16 (pinned with av in pyproject.toml) has no setting for it, so a peer's audio
receiver gets a buffer with a shorter prefetch when its track appears, before any packet.
A different aiortc that lacks the attribute is left as it is, with a warning.
"""

from __future__ import annotations

import logging
from typing import Any

from aiortc.jitterbuffer import JitterBuffer

log = logging.getLogger(__name__)

#: aiortc's own choice for audio: 16 packets of room, released after 4 newer ones.
AIORTC_AUDIO_CAPACITY = 16
AIORTC_AUDIO_PREFETCH = 4
_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"


def set_audio_prefetch(receiver: Any, prefetch: int) -> bool:
    """Give an audio ``RTCRtpReceiver`` a jitter buffer that releases a packet once
    ``prefetch`` newer ones have arrived (aiortc: 4). Returns False where it could not."""
    current = getattr(receiver, _ATTRIBUTE, None)
    if not isinstance(current, JitterBuffer) or getattr(current, "_origin", 0) is not None:
        # Not aiortc 1.16's layout, or packets already went through: leave it alone.
        log.warning("cannot set the mic's jitter buffer prefetch on this aiortc; keeping its default")
        return False
    setattr(receiver, _ATTRIBUTE, JitterBuffer(capacity=AIORTC_AUDIO_CAPACITY, prefetch=prefetch))
    return True
