"""Visemes, mouth curves, the animator and idle motion: pure functions, no models."""

from __future__ import annotations

import numpy as np
import pytest

from avatarchat.avatar.animator import CLOSE_S, Animator, clean_phonemes
from avatarchat.avatar.idle import BLINK_INTERVAL, HEAD_MAX_DEG, IdleMotion
from avatarchat.avatar.lipsync import curves_from_audio, curves_from_phonemes
from avatarchat.avatar.visemes import viseme_of
from avatarchat.engine.events import PhonemeTiming as P
from avatarchat.engine.events import ReplyAudio

FPS = 25


@pytest.mark.parametrize(("phoneme", "viseme"), [
    # IPA
    ("p", "PP"), ("b", "PP"), ("m", "PP"), ("f", "FF"), ("θ", "TH"), ("t", "DD"), ("k", "kk"),
    ("ʃ", "CH"), ("s", "SS"), ("n", "nn"), ("ɹ", "RR"), ("ɑ", "aa"), ("ɛ", "E"), ("ɪ", "ih"),
    ("ɔ", "oh"), ("u", "ou"), ("ʊ", "ou"), ("ə", "E"),
    # misaki capitals: diphthongs A=eɪ I=aɪ O=oʊ W=aʊ Y=ɔɪ, and T (flap)
    ("A", "aa"), ("I", "aa"), ("O", "oh"), ("W", "aa"), ("Y", "oh"), ("T", "DD"),
    # espeak-ng IPA: stress and length marks attached, affricates as two letters
    ("ˈuː", "ou"), ("ˌɑː", "aa"), ("ˈæ", "aa"), ("ɜː", "E"), ("ˈɛ", "E"),
    ("tʃ", "CH"), ("dʒ", "CH"), ("ts", "SS"), ("dz", "SS"),
    # espeak mnemonics
    ("@", "E"), ("tS", "CH"), ("u:", "ou"),
    # no sound of their own
    (" ", "sil"), ("ˈ", "sil"), ("ˌ", "sil"), (",", "sil"), (".", "sil"), ("?", "sil"), ("_", "sil"),
])
def test_viseme_mapping(phoneme: str, viseme: str) -> None:
    assert viseme_of(phoneme) == viseme


def _pap(ant: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    phonemes = [P("p", 0.0, 0.1), P("ɑ", 0.1, 0.3), P("p", 0.3, 0.4)]
    times = np.arange(-0.1, 0.5, 0.005)
    curves = curves_from_phonemes(phonemes, times, anticipation=ant)
    return times, curves.channel("jaw"), curves.channel("press")


def test_jaw_between_two_bilabials_rises_and_falls_smoothly_ahead_of_the_vowel() -> None:
    times, jaw, _ = _pap()
    peak = int(np.argmax(jaw))
    # One smooth hump: monotone up to the peak and down after it, no steps.
    inside = (times >= -0.05) & (times <= 0.35)
    up, down = jaw[inside & (times <= times[peak])], jaw[inside & (times >= times[peak])]
    assert np.all(np.diff(up) >= -1e-4) and np.all(np.diff(down) <= 1e-4)
    assert np.abs(np.diff(jaw)).max() < 0.06  # per 5 ms
    assert jaw[peak] > 0.4  # the strong bilabials on both sides hold it below the full 0.85
    # The vowel's centre is 0.2 s; the peak comes ~anticipation (50 ms) before it.
    assert 0.2 - 0.05 - 0.03 <= times[peak] <= 0.2 - 0.05 + 0.03
    times0, jaw0, _ = _pap(ant=0.0)
    assert times[peak] < times0[int(np.argmax(jaw0))]


@pytest.mark.parametrize("length", [0.05, 0.1])
def test_bilabial_closes_the_mouth_at_its_centre(length: float) -> None:
    phonemes = [P("ɑ", 0.0, 0.2), P("m", 0.2, 0.2 + length), P("ɑ", 0.2 + length, 0.4 + length)]
    centre = 0.2 + length / 2 - 0.05  # the /m/ centre, anticipated
    assert curves_from_phonemes(phonemes, np.array([centre]), anticipation=0.05).visemes[0] == "PP"
    anim = Animator(anticipation=0.05, timing_lead=0.0)
    anim.begin(0.0)
    anim.speak(_chunk(phonemes, 0.5 + length))
    times = np.arange(0.0, 0.5, 0.005)
    curves = anim.mouth(times)
    at = int(np.argmin(np.abs(times - centre)))
    assert curves.channel("press")[at] > 0.95 and curves.channel("jaw")[at] < 0.05
    # … and the vowels on either side still open it.
    assert curves.channel("jaw")[: at].max() > 0.5 and curves.channel("jaw")[at:].max() > 0.5
    assert np.abs(np.diff(curves.channel("jaw"))).max() < 0.15  # per 5 ms


def _sequence(names: str, length: float = 0.06) -> list[P]:
    return [P(n, k * length, (k + 1) * length) for k, n in enumerate(names.split())]


def test_rounding_carries_over_tongue_consonants_but_not_lip_ones() -> None:
    """Fast "u n u", "u t u": the lips stay rounded through the n and the t (in speech
    only the tongue moves there); not through a p, which closes them, nor where no
    rounded vowel is near ("i t a")."""
    times = np.arange(0, 0.3, 0.005)
    for middle in ("n", "t", "s"):
        curves = curves_from_phonemes(_sequence(f"u {middle} u"), times, anticipation=0.0)
        assert curves.channel("round")[np.argmin(np.abs(times - 0.09))] > 0.75, middle
    closed = curves_from_phonemes(_sequence("u p u"), times, anticipation=0.0)
    at_p = np.argmin(np.abs(times - 0.09))
    assert closed.channel("press")[at_p] > 0.6 and closed.channel("round")[at_p] < 0.5
    spread = curves_from_phonemes(_sequence("i t a"), times, anticipation=0.0)
    assert spread.channel("round").max() < 0.01


def test_audio_fallback_opens_on_loud_and_closes_on_silence() -> None:
    rate = 16000
    audio = np.zeros(2 * rate, np.float32)
    n = np.arange(rate // 2)
    audio[rate // 2:rate] = 0.3 * np.sin(2 * np.pi * 220 * n / rate)  # 0.5–1.0 s loud
    times = np.arange(0, 2.0, 1 / FPS)
    jaw = curves_from_audio(audio, rate, times).channel("jaw")
    assert jaw[(times > 0.6) & (times < 0.9)].min() > 0.4
    assert jaw[times < 0.4].max() < 0.05 and jaw[times > 1.2].max() < 0.05


# -- the animator ------------------------------------------------------------------------------


def _chunk(phonemes: list[P], duration: float, offset: float = 0.0) -> ReplyAudio:
    return ReplyAudio(1, np.zeros(int(duration * 24000), np.float32), 24000, offset, "x", tuple(phonemes))


def test_clean_phonemes_drops_spaces_and_stress_and_keeps_pauses() -> None:
    raw = [P("w", 0.15, 0.2), P("ˈ", 0.2, 0.275), P("ɛ", 0.275, 0.375), P(" ", 0.375, 0.425),
           P("l", 0.425, 0.5), P(".", 0.5, 0.6), P("ɑ", 0.8, 0.9)]
    kept, stressed = clean_phonemes(raw, shift=-0.05, duration=1.0)
    names = [p.phoneme for p in kept]
    assert " " not in names and "ˈ" not in names and "." in names
    e = kept[names.index("ɛ")]
    assert e.start == pytest.approx(0.15) and stressed == [pytest.approx((0.15 + 0.325) / 2)]
    # The space's time went to its neighbours; the long gap became silence.
    assert kept[names.index("l")].start == pytest.approx(e.end)
    assert names[0] == "_" and names[-1] == "_" and names.count("_") == 3
    for a, b in zip(kept, kept[1:]):
        assert a.end == pytest.approx(b.start)


def test_word_boundary_does_not_close_the_mouth() -> None:
    anim = Animator(anticipation=0.0, timing_lead=0.0)
    anim.begin(0.0)
    anim.speak(_chunk([P("ɑ", 0.1, 0.3), P(" ", 0.3, 0.35), P("ɑ", 0.35, 0.55)], 0.7))
    jaw = anim.motion(np.arange(0.2, 0.45, 0.01)).channel("jaw")
    assert jaw.min() > 0.6


def test_mouth_fades_in_and_closes_smoothly() -> None:
    anim = Animator()
    anim.begin(0.0)
    anim.speak(_chunk([P("ɑ", 0.0, 0.5)], 0.5))
    closed_at = anim.finish()
    assert closed_at == pytest.approx(0.5 + CLOSE_S)
    times = np.arange(0.0, 1.0, 0.005)
    jaw = anim.motion(times).channel("jaw")
    # 60 ms fade-in of a wide-open vowel: at most ~0.11 per 5 ms.
    assert jaw[0] == 0.0 and np.abs(np.diff(jaw)).max() < 0.12
    assert jaw[times > closed_at].max() == 0.0
    assert jaw[(times > 0.1) & (times < 0.45)].min() > 0.5


def test_stop_closes_from_where_it_is() -> None:
    anim = Animator()
    anim.begin(10.0)
    anim.speak(_chunk([P("ɑ", 0.0, 2.0)], 2.0))
    closed_at = anim.stop(1.0)
    times = np.arange(0.9, 1.5, 0.01)
    jaw = anim.motion(times).channel("jaw")
    assert jaw[0] > 0.5 and jaw[times >= closed_at].max() == 0.0
    assert np.abs(np.diff(jaw)).max() < 0.1
    # Between replies the session-clock face shows the same closing, then idle.
    assert anim.idle_params(10.0 + 1.05).jaw > 0.0
    assert anim.idle_params(10.0 + 1.5).jaw == 0.0


def test_idle_after_a_closed_reply_is_the_reply_curves_own_face(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the close, idle_params takes a shortcut (pure idle): the same face, to the bit,
    as sampling the finished reply's curves, and without sampling them."""
    anim = Animator(seed=5)
    anim.begin(3.0)
    anim.speak(_chunk([P("ɑ", 0.0, 0.4), P("m", 0.4, 0.5), P("o", 0.5, 0.9)], 0.9))
    closed_at = anim.finish()
    during = [3.0 + t for t in np.arange(0.0, closed_at, 0.02)]
    after = [3.0 + closed_at + t for t in np.arange(0.0, 8.0, 0.04)]
    assert any(anim.idle_params(t).jaw > 0.3 for t in during)
    sampled = [anim.params_at(t - anim.origin) for t in after]
    monkeypatch.setattr(anim, "params", lambda times: pytest.fail("sampled the closed reply"))
    assert [anim.idle_params(t) for t in after] == sampled
    assert any(p.blink > 0.5 for p in sampled) and len({p.yaw for p in sampled}) > 100


def test_params_keep_idle_life_while_speaking() -> None:
    anim = Animator(seed=3)
    anim.begin(0.0)
    anim.speak(_chunk([P("ɑ", 0.0, 20.0)], 20.0))
    params = anim.params(np.arange(0.0, 20.0, 1 / FPS))
    assert max(p.blink for p in params) > 0.9  # blinks go on
    assert len({round(p.breath, 3) for p in params}) > 50
    assert max(abs(p.yaw) for p in params) > 0.3


# -- idle ----------------------------------------------------------------------------------------


def test_blinks_come_every_2_to_6_seconds() -> None:
    idle = IdleMotion(seed=7)
    starts = idle.blink_times(60.0)
    # A double blink is one event: its second start follows the first by 0.25 s.
    events = [s for i, s in enumerate(starts) if i == 0 or s - starts[i - 1] > 1.0]
    gaps = np.diff(events)
    assert 10 <= len(events) <= 30
    assert gaps.min() >= BLINK_INTERVAL[0] - 1e-9 and gaps.max() <= BLINK_INTERVAL[1] + 0.25 + 1e-9
    # Sampled at 100 Hz, each blink really closes the eyes.
    t = np.arange(0.0, 60.0, 0.01)
    closed = np.array([idle.blink(x) for x in t]) > 0.9
    assert np.count_nonzero(np.diff(closed.astype(int)) == 1) == len(starts)


def test_idle_is_continuous_bounded_and_alive() -> None:
    idle = IdleMotion(seed=1)
    t = np.arange(0.0, 60.0, 1 / FPS)
    params = [idle.at(x) for x in t]
    for name in ("yaw", "pitch", "roll"):
        v = np.array([getattr(p, name) for p in params])
        assert np.abs(v).max() <= HEAD_MAX_DEG + 1e-9
        assert np.abs(np.diff(v)).max() < 0.1  # degrees per frame: slow drift
    breath = np.array([p.breath for p in params])
    assert np.abs(np.diff(breath)).max() < 0.05 and breath.max() - breath.min() > 0.9
    # Over any 5 s, every frame differs from the one before it.
    first5 = [p.as_dict() for p in params[: 5 * FPS]]
    assert all(a != b for a, b in zip(first5, first5[1:]))


def test_idle_is_deterministic_per_seed() -> None:
    t = np.arange(0.0, 20.0, 0.1)
    a = [IdleMotion(5).at(x) for x in t]
    b_motion = IdleMotion(5)
    b = [b_motion.at(x) for x in t[::-1]][::-1]  # query order does not matter
    assert a == b
    assert a != [IdleMotion(6).at(x) for x in t]


def test_listening_look_blends_in_and_out() -> None:
    idle = IdleMotion(seed=2)
    idle.set_listening(True, 1.0)
    t = np.arange(0.0, 3.0, 0.01)
    smile = np.array([idle.at(x).smile for x in t])
    assert smile[t < 1.0].max() == 0.0 and smile[t > 1.5].min() == pytest.approx(0.2)
    assert np.abs(np.diff(smile)).max() < 0.01
    idle.set_listening(False, 1.2)  # mid-ramp: goes back down from where it was
    assert idle.at(1.2).smile == pytest.approx(idle.listening_level(1.2) * 0.2)
    assert idle.at(2.0).smile == 0.0
