"""Mandarin lip-sync: the portrait stage driven by the Mandarin voice's timings (pinyin
initials and finals as IPA-like segments), measured as the English avatar is
(tests/test_avatar_video.py): the MP4 is written, decoded back, and the mouth opening seen
in its frames is cross-correlated with the loudness of its audio. Same bound as English:
within ±40 ms without anticipation; with it, the lips lead by design and never trail.

The Mandarin voice's timings sit on its audio (its durations drive the vocoder), where
hibari's trail its audio by ~50 ms: the portrait stage runs with ``timing_lead_ms: 0`` for
it, as configs/zh.yaml sets (with hibari's 50 ms the lips led by 32 ms: -32.0 / -67.7 ms).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from avatarchat import addons
from avatarchat.engine.handler import HandlerLoadError
from avatarchat.handlers.avatar.portrait import PortraitHandler, PortraitOptions
from avatarchat.handlers.tts.mandarin import MandarinOptions, MandarinTTS
from avatarchat.handlers.tts.mandarin_files import ADDON
from tests.test_avatar_video import mp4_lag

pytestmark = pytest.mark.slow

CLAUSES = (
    "你好，我叫艾娃。",
    "我很喜欢蓝蓝的天空，热乎乎的汤，还有好看的书。",
    "谁知道月亮可以看起来这么大呢？",
)


@pytest.fixture(scope="module")
def portrait() -> PortraitHandler:
    handler = PortraitHandler(PortraitOptions(timing_lead_ms=0))
    try:
        handler.load()
    except (HandlerLoadError, ImportError) as exc:
        pytest.skip(f"the default avatar or the renderer is not there yet: {exc}")
    return handler


@pytest.fixture(scope="module")
def chunks() -> list[tuple[np.ndarray, tuple, str]]:
    if addons.state(ADDON) != "verified":
        pytest.skip("the Mandarin voice is not added: avatarchat models add mandarin-voice --accept-licence")
    tts = MandarinTTS(MandarinOptions())
    tts.load()
    return [(*tts.synthesize(text), text) for text in CLAUSES]


async def test_mandarin_mp4_is_in_sync(portrait: PortraitHandler, chunks: list, tmp_path: Path) -> None:
    plain = PortraitHandler(PortraitOptions(anticipation_ms=0, timing_lead_ms=0))
    plain.asset, plain.renderer = portrait.asset, portrait.renderer
    lag0 = await mp4_lag(plain, chunks, tmp_path / "plain.mp4")
    lag = await mp4_lag(portrait, chunks, tmp_path / "reply.mp4")
    print(f"Mandarin A/V lag of the mouth against the audio: {lag0:+.1f} ms without anticipation, "
          f"{lag:+.1f} ms with {portrait.options.anticipation_ms:.0f} ms (negative: lips lead)")
    assert abs(lag0) <= 40
    assert -portrait.options.anticipation_ms - 40 <= lag <= 20
