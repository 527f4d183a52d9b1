"""The audio-driven mouth (avatar.audio_visemes): a voice that gives no phoneme timings
still moves the lips with its vowels. Pure-function cases on synthetic audio; the real
voices (hibari, the Mandarin add-on) against their own phoneme-timed mouth; and the
portrait stage's MP4 in sync when its chunks come without timings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avatarchat.avatar.animator import Animator
from avatarchat.avatar.audio_visemes import (
    CLASSES,
    VISEME_CLASS,
    AudioMouth,
    AudioVisemeModel,
    default_model,
    features,
    windows_at,
)
from avatarchat.avatar.lipsync import frame_times
from avatarchat.bench.lipsync import Speech, animate, versus
from avatarchat.engine.events import ReplyAudio

RATE = 24000
FPS = 25


def _vowelish(seconds: float, f0: float = 140.0, formants: tuple[float, ...] = (700.0, 1200.0)) -> np.ndarray:
    """A buzz at ``f0`` through resonances at ``formants``: speech-like enough for MFCCs."""
    n = int(seconds * RATE)
    src = np.zeros(n)
    src[:: int(RATE / f0)] = 1.0
    spec = np.fft.rfft(src)
    hz = np.fft.rfftfreq(n, 1 / RATE)
    gain = sum(1.0 / (1.0 + ((hz - f) / 80.0) ** 2) for f in formants)
    out = np.fft.irfft(spec * gain, n)
    return (0.2 * out / np.abs(out).max()).astype(np.float32)


def _speech_and_silence() -> np.ndarray:
    return np.concatenate([np.zeros(RATE // 2, np.float32), _vowelish(0.6), np.zeros(RATE // 2, np.float32),
                           _vowelish(0.6, formants=(300.0, 2300.0)), np.zeros(RATE // 2, np.float32)])


def _mouth(audio: np.ndarray, times: np.ndarray, lead: float = 0.0) -> AudioMouth:
    heard = AudioMouth(lead)
    heard.add(0.0, audio, RATE)
    return heard


def test_features_measure_level_and_spectral_shape() -> None:
    n = int(0.032 * RATE)
    t = np.arange(n) / RATE
    sine = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    mfcc, level = features(np.stack([sine, np.zeros(n, np.float32)]), RATE)
    assert mfcc.shape == (2, 12)
    assert level[0] == pytest.approx(20 * np.log10(0.1 / np.sqrt(2)), abs=0.2) and level[1] < -100
    # A windowed read past either end is zero-padded, not wrapped.
    w = windows_at(np.ones(RATE, np.float32), RATE, np.array([0.0, 0.5, 1.0]))
    assert w.shape == (3, n) and w[0, : n // 2].sum() == 0 and w[1].min() == 1 and w[2, n // 2 + 1:].sum() == 0


def test_silence_closes_the_mouth_and_sound_opens_it() -> None:
    audio = _speech_and_silence()
    times = frame_times(len(audio) / RATE, FPS)
    curves = _mouth(audio, times).curves(times)
    jaw = curves.channel("jaw")
    silent = (times < 0.4) | ((times > 1.2) & (times < 1.5)) | (times > 2.3)
    loud = ((times > 0.6) & (times < 1.0)) | ((times > 1.7) & (times < 2.1))
    assert jaw[silent].max() < 0.02 and jaw[loud].min() > 0.2
    assert all(v == "sil" for v, s in zip(curves.visemes, silent) if s)
    assert all(v != "sil" for v, s in zip(curves.visemes, loud) if s)


def test_a_quiet_voice_moves_the_mouth_as_a_loud_one() -> None:
    audio = _speech_and_silence()
    times = frame_times(len(audio) / RATE, FPS)
    loud = _mouth(audio, times).curves(times).values
    quiet = _mouth(audio * 0.05, times).curves(times).values
    np.testing.assert_allclose(quiet, loud, atol=1e-3)


def test_frames_do_not_depend_on_batching_or_streamed_pieces() -> None:
    audio = _speech_and_silence()
    times = frame_times(len(audio) / RATE, FPS)
    whole = _mouth(audio, times, lead=0.05).curves(times).values
    batched = np.concatenate([_mouth(audio, times, lead=0.05).curves(times[k:k + 5]).values
                              for k in range(0, len(times), 5)])
    np.testing.assert_allclose(batched, whole, atol=1e-6)
    # Pieces of 0.3 s joined on the reply clock read across their seams like one chunk
    # (the speech level is the loudest piece's, so the opening may differ by a hair).
    streamed = AudioMouth(0.05)
    step = int(0.3 * RATE)
    for a in range(0, len(audio), step):
        streamed.add(a / RATE, audio[a:a + step], RATE)
    np.testing.assert_allclose(streamed.curves(times).values, whole, atol=0.01)
    assert streamed.curves(times).visemes == _mouth(audio, times, lead=0.05).curves(times).visemes


def test_audio_not_received_yet_is_held_not_read_as_silence() -> None:
    vowel = _vowelish(1.0)
    heard = AudioMouth(0.05)
    heard.add(0.0, vowel[: RATE // 2], RATE)  # the next piece is still on its way
    last = heard.curves(np.array([0.48]))
    assert last.channel("jaw")[0] > 0.2 and last.visemes[0] != "sil"
    assert heard.covers(np.array([0.2, 0.49, 0.5, 0.7])).tolist() == [True, True, False, False]


def test_other_sample_rates_and_a_rate_change_mid_reply() -> None:
    from avatarchat.audio.resample import resample

    audio = _speech_and_silence()
    times = frame_times(len(audio) / RATE, FPS)
    whole = _mouth(audio, times).curves(times)
    heard = AudioMouth()
    half = len(audio) // 2
    heard.add(0.0, audio[:half], RATE)  # a 24 kHz piece, then the rest at 16 kHz
    heard.add(half / RATE, resample(audio[half:], RATE, 16000), 16000)
    mixed = heard.curves(times)
    assert heard.covers(times).all()
    # The features are the same at any rate (mel bands in Hz, windows in seconds).
    assert np.mean([a == b for a, b in zip(whole.visemes, mixed.visemes)]) > 0.9
    np.testing.assert_allclose(mixed.channel("jaw"), whole.channel("jaw"), atol=0.05)


def test_the_shipped_templates_load_and_say_how_they_were_made(tmp_path: Path) -> None:
    model = default_model()
    assert model.templates.shape[0] == len(CLASSES) and model.shapes.shape == (len(CLASSES), 5)
    made = model.made
    assert "audio_visemes_fit" in made["by"] and made["held_out_fifth_class_accuracy"] > made["chance_class_accuracy"]
    # Licence: nothing fitted on the Mandarin add-on voice (non-commercial data) ships.
    assert made["voices"] and not any("mandarin" in voice for voice in made["voices"])
    again = AudioVisemeModel.from_json(json.loads(json.dumps(model.to_json())))
    np.testing.assert_allclose(again.projection, model.projection)
    bad = model.to_json() | {"classes": ["A", "B"]}
    with pytest.raises(ValueError, match="other classes"):
        AudioVisemeModel.from_json(bad)


def test_the_animator_uses_the_classifier_for_chunks_without_timings() -> None:
    audio = _speech_and_silence()
    times = frame_times(len(audio) / RATE, FPS)
    chunk = ReplyAudio(1, audio, RATE, 0.0, "x", ())
    mouths = {}
    for mode in ("mfcc", "loudness"):
        anim = Animator(anticipation=0.05, timing_lead=0.0, audio_mouth=mode)
        anim.begin(0.0)
        anim.speak(chunk)
        mouths[mode] = anim.mouth(times)
    np.testing.assert_allclose(mouths["mfcc"].values, _mouth(audio, times, 0.05).curves(times).values, atol=1e-6)
    assert set(mouths["loudness"].visemes) <= {"aa", "sil"}  # the old mouth knows no vowels
    assert len(set(mouths["mfcc"].visemes) - {"sil"}) >= 1
    with pytest.raises(ValueError, match="audio_mouth"):
        Animator(audio_mouth="visemes")


def test_the_portrait_option_picks_the_audio_mouth() -> None:
    from pydantic import ValidationError

    from avatarchat.engine.handler import SessionInfo
    from avatarchat.handlers.avatar.portrait import PortraitHandler, PortraitOptions

    for mode in ("mfcc", "loudness"):
        options = PortraitOptions() if mode == "mfcc" else PortraitOptions(audio_mouth=mode)
        ctx = PortraitHandler(options).create_context(SessionInfo(mode))  # no render: no load needed
        assert ctx.animator.audio_mouth == mode
    with pytest.raises(ValidationError, match="audio_mouth"):
        PortraitOptions(audio_mouth="visemes")


async def test_a_streamed_untimed_reply_holds_each_pieces_last_frames_for_the_next() -> None:
    """The portrait stage (poses, no render) fed 100 ms pieces without timings, one at a
    time: a piece's frames whose audio reaches past it wait for the next piece, so every
    frame is the one the whole clause makes; the ReplyEnd renders the held ones."""
    from avatarchat.engine.events import AvatarPose, ReplyEnd
    from avatarchat.engine.handler import SessionInfo
    from avatarchat.handlers.avatar.portrait import PortraitHandler, PortraitOptions

    audio = _speech_and_silence()
    handler = PortraitHandler(PortraitOptions())  # poses need no renderer: no load
    ctx = handler.create_context(SessionInfo("held", avatar_output="params"))
    reach = 0.05 + 0.036
    step = int(0.1 * RATE)
    poses: list[AvatarPose] = []
    for a in range(0, len(audio), step):
        piece = ReplyAudio(1, audio[a:a + step], RATE, a / RATE, "", ())
        async for e in handler.handle(ctx, piece):
            if isinstance(e, AvatarPose):
                assert e.pts < piece.offset + piece.duration - reach + 1e-9  # held: not yet
                poses.append(e)
        assert poses and poses[-1].pts >= piece.offset + piece.duration - reach - 2 / FPS  # no more held
    async for e in handler.handle(ctx, ReplyEnd(1)):
        if isinstance(e, AvatarPose):
            poses.append(e)
    assert [p.index for p in poses] == list(range(len(poses)))
    jaw = np.array([p.values[p.names.index("jaw")] for p in poses])
    whole = Animator(anticipation=0.05, timing_lead=0.05)
    whole.begin(0.0)
    whole.speak(ReplyAudio(1, audio, RATE, 0.0, "", ()))
    whole.finish()
    times = np.array([p.pts for p in poses])
    want = whole.motion(times).channel("jaw")
    # (The speech level is the loudest piece's so far, so an early frame may differ by a hair.)
    np.testing.assert_allclose(jaw, want, atol=0.02)
    # What holding saves: each piece's frames made at once read its end as held audio.
    eager = Animator(anticipation=0.05, timing_lead=0.05)
    eager.begin(0.0)
    got = []
    for a in range(0, len(audio), step):
        piece = ReplyAudio(1, audio[a:a + step], RATE, a / RATE, "", ())
        eager.speak(piece)
        got.append(eager.motion(frame_times(piece.duration, FPS, piece.offset)).channel("jaw"))
    eager_jaw = np.concatenate(got)
    print(f"jaw off the whole clause's by {np.abs(jaw - want).max():.3f} held, {np.abs(eager_jaw - want[: len(eager_jaw)]).max():.3f} not")
    assert np.abs(eager_jaw - want[: len(eager_jaw)]).max() > 0.1


# -- real voices ---------------------------------------------------------------------------------

EN = ("Who knew that the moon could look so huge?", "I see three green trees by the sea.",
      "Hello there, it is lovely to meet you.", "Would you like some soup, or shall we talk about something else?")


@pytest.fixture(scope="module")
def english() -> Speech:
    from avatarchat.handlers.tts.hibari import HibariOptions, HibariTTS

    tts = HibariTTS(HibariOptions())
    tts.load()
    return Speech("en", "hibari", tts.sample_rate, 0.05, [tts.synthesize(t) for t in EN])


def _compare(speech: Speech) -> tuple[dict, dict, dict[str, np.ndarray]]:
    ref, _, _ = animate(speech, "phonemes", 0.0)
    old, _, _ = animate(speech, "loudness", 0.0)
    new, _, _ = animate(speech, "mfcc", 0.0)
    classes = np.array([VISEME_CLASS[v] for v in ref.visemes])
    return versus(ref, old), versus(ref, new), {"classes": classes, "round": new.channel("round"),
                                                "stretch": new.channel("stretch")}


def _assert_better_than_loudness(old: dict, new: dict, mine: dict[str, np.ndarray]) -> None:
    assert new["jaw_corr"] > old["jaw_corr"]
    assert new["class_agreement_pct"] > old["class_agreement_pct"] + 10
    assert new["round_corr"] > 0.15 and abs(new["jaw_lag_ms"]) <= 40  # loudness: ~0
    # Rounded vowels round the lips more than spread ones, and spread ones stretch them more.
    # (1.2: templates fitted on hibari and espeak-ng give 1.29 on the English sentences here,
    # as hibari alone does; the earlier ones, fitted with the Mandarin voice too, gave 1.65.)
    rounded, spread = np.isin(mine["classes"], ["O", "U"]), np.isin(mine["classes"], ["I", "E"])
    assert mine["round"][rounded].mean() > 1.2 * mine["round"][spread].mean()
    assert mine["stretch"][spread].mean() > mine["stretch"][rounded].mean()


def test_english_vowels_follow_the_phoneme_timed_mouth(english: Speech) -> None:
    old, new, mine = _compare(english)
    print(f"hibari, audio mouth vs phoneme-timed: loudness {old}, mfcc {new}")
    _assert_better_than_loudness(old, new, mine)


def test_mandarin_vowels_follow_the_phoneme_timed_mouth() -> None:
    from avatarchat import addons
    from avatarchat.handlers.tts.mandarin import MandarinOptions, MandarinTTS
    from avatarchat.handlers.tts.mandarin_files import ADDON

    if addons.state(ADDON) != "verified":
        pytest.skip("the Mandarin voice is not added: avatarchat models add mandarin-voice --accept-licence")
    tts = MandarinTTS(MandarinOptions())
    tts.load()
    texts = ("谁知道月亮可以看起来这么大呢？", "我想去北京看看故宫。", "你喜欢吃鱼还是吃肉？")
    speech = Speech("zh", "mandarin", tts.sample_rate, 0.0, [tts.synthesize(t) for t in texts])
    old, new, mine = _compare(speech)
    print(f"mandarin, audio mouth vs phoneme-timed: loudness {old}, mfcc {new}")
    _assert_better_than_loudness(old, new, mine)


@pytest.mark.slow
async def test_an_untimed_reply_is_in_sync_in_the_mp4(english: Speech, tmp_path: Path) -> None:
    """The portrait stage with chunks that carry no timings (a network voice): the MP4 is
    measured as tests/test_avatar_video.py measures the timed one, same bounds."""
    from avatarchat.engine.handler import HandlerLoadError
    from avatarchat.handlers.avatar.portrait import PortraitHandler, PortraitOptions
    from tests.test_avatar_video import mp4_lag

    handler = PortraitHandler(PortraitOptions())
    try:
        handler.load()
    except (HandlerLoadError, ImportError) as exc:
        pytest.skip(f"the default avatar or the renderer is not there yet: {exc}")
    plain = PortraitHandler(PortraitOptions(anticipation_ms=0))
    plain.asset, plain.renderer = handler.asset, handler.renderer
    untimed = [(samples, (), text) for (samples, _), text in zip(english.clauses, EN)]
    lag0 = await mp4_lag(plain, untimed, tmp_path / "plain.mp4")  # also asserts corr > 0.3
    lag = await mp4_lag(handler, untimed, tmp_path / "reply.mp4")
    print(f"untimed A/V lag: {lag0:+.1f} ms without anticipation, {lag:+.1f} ms with 50 ms")
    assert abs(lag0) <= 40
    assert -handler.options.anticipation_ms - 40 <= lag <= 20


def test_bench_lipsync_reports_both_audio_mouths(tmp_path: Path) -> None:
    from avatarchat.cli.main import main

    out = tmp_path / "lipsync.json"
    assert main(["bench", "lipsync", "--languages", "en", "--no-render", "--rounds", "1",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())["languages"]["en"]
    assert report["audio_s"] > 20 and set(report) >= {"phonemes", "loudness", "mfcc"}
    assert report["mfcc"]["cost"]["ms_per_audio_s"] > 0
    streamed = report["mfcc"]["streamed"]
    assert streamed["jaw_corr_vs_whole_no_anticipation"] > 0.9
    # Holding a piece's last frames for the next piece makes them as the whole clause would.
    assert streamed["jaw_corr_vs_whole_anticipation_50ms"] > 0.99
    assert streamed["jaw_corr_vs_whole_anticipation_50ms"] > streamed["unheld_jaw_corr_vs_whole_anticipation_50ms"]
    assert report["mfcc"]["vs_phonemes"]["class_agreement_pct"] > report["loudness"]["vs_phonemes"]["class_agreement_pct"]
