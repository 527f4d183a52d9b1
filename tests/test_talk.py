"""`avatarchat talk` end to end with the real models, and its handling of bad input."""

from __future__ import annotations

import json
import math
import re
import wave
from pathlib import Path

import numpy as np
import pytest

from avatarchat.audio.io import load_audio, write_wav
from avatarchat.cli.main import main
from avatarchat.config import load_config
from avatarchat.engine.events import SpeechEnded, TimingMark, now
from avatarchat.engine.loop_probe import LoopLagProbe
from avatarchat.engine.pipeline import Pipeline
from avatarchat.engine.turn import collect_turn
from avatarchat.handlers.asr.whisper import WhisperHandler
from tests.configs import greedy_default
from tests.lag import assert_responsive, idle_lag

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


@pytest.fixture(scope="module")
def voice_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default without the avatar stage: these tests are about the voice. Greedy
    decoding: the replies, which whisper must hear back, are the same every run."""
    return greedy_default(tmp_path_factory.mktemp("cfg"), without=("avatar",))


@pytest.fixture(scope="module")
def whisper() -> WhisperHandler:
    asr = WhisperHandler(WhisperHandler.Options())
    asr.load()
    return asr


@pytest.mark.slow
def test_talk_answers_each_turn_and_writes_a_transcript(
    tmp_path: Path, voice_config: Path, whisper: WhisperHandler, capsys: pytest.CaptureFixture[str]
) -> None:
    # The second question arrives as 44.1 kHz stereo: any rate and channel count is fine.
    stereo = tmp_path / "followup-stereo.wav"
    mono = load_audio(SAMPLES / "followup.wav", 44100)
    with wave.open(str(stereo), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(44100)
        pcm = (np.repeat(mono[:, None], 2, axis=1) * 32767).astype("<i2")
        w.writeframes(pcm.tobytes())
    out = tmp_path / "out"
    code = main(["talk", "--input", str(SAMPLES / "question.wav"), "--input", str(stereo),
                 "--text", "Say hello.", "--out", str(out), "--config", str(voice_config)])
    assert code == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "loaded  llm  local in" in err and "pipeline ready in" in err  # start-up shows what loads

    transcript = json.loads((out / "transcript.json").read_text())
    turns = transcript["turns"]
    assert [t["turn"] for t in turns] == [1, 2, 3]
    assert words(turns[0]["user"]) == ["what", "is", "the", "capital", "of", "france"]
    assert words(turns[1]["user"]) == ["and", "what", "is", "it", "famous", "for"]
    assert turns[2]["user"] == "Say hello." and "asr_ms" not in turns[2]["timings_ms"]
    for t in turns:
        assert t["error"] is None and t["reply"].strip()
        assert {"llm_first_token_ms", "tts_first_audio_ms"} <= set(t["timings_ms"])
    assert {"asr_ms", "first_audio_after_speech_end_ms"} <= set(turns[0]["timings_ms"])

    # Listen through the numbers: whisper hears in each reply WAV what the reply says.
    for t in turns:
        audio = load_audio(out / t["audio"], 16000)
        assert abs(len(audio) / 16000 - t["audio_seconds"]) < 0.05
        heard = words(whisper.transcribe(audio, "en"))
        said = words(t["reply"])
        overlap = len(set(heard) & set(said)) / max(len(set(said)), 1)
        assert overlap > 0.6, (t["reply"], heard)


@pytest.mark.slow
async def test_a_real_pipeline_never_stalls_the_event_loop(voice_config: Path) -> None:
    pipeline = await Pipeline.load(load_config(voice_config), progress=lambda _: None)
    speech = load_audio(SAMPLES / "question.wav")
    idle = await idle_lag()
    async with LoopLagProbe() as probe, pipeline.session() as session:
        turn = session.new_turn()
        t = now()
        session.push(TimingMark(turn, "speech_end", t))
        session.push(SpeechEnded(turn, speech, speech_end=t))
        voice = await collect_turn(session, turn)
        typed = await collect_turn(session, session.say("Tell me about the sea."))
    assert voice.user_text and voice.reply_text and typed.reply_text
    assert len(voice.audio()) > 0 and len(typed.audio()) > 0
    assert len(probe.lags) > 50
    assert_responsive(probe.lags, idle, "two real turns")


def _wav(path: Path, samples: np.ndarray, rate: int = 16000, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(width), w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def _float_wav_with_nan(path: Path) -> Path:
    """A 32-bit float WAV (format 3) whose samples are NaN: wave cannot write those."""
    data = np.full(1600, math.nan, "<f4").tobytes()
    fmt = (3).to_bytes(2, "little") + (1).to_bytes(2, "little") + (16000).to_bytes(4, "little") \
        + (64000).to_bytes(4, "little") + (4).to_bytes(2, "little") + (32).to_bytes(2, "little")
    body = b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt + b"data" + len(data).to_bytes(4, "little") + data
    path.write_bytes(b"RIFF" + len(body).to_bytes(4, "little") + body)
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD_INPUTS = {
    "not_audio": (lambda p: _bytes(p / "notes.wav", b"these are my notes, not audio\n"), "not a readable audio file"),
    "empty_file": (lambda p: _bytes(p / "empty.wav", b""), "the file is empty"),
    "zero_samples": (lambda p: _wav(p / "zero.wav", np.zeros(0, "<i2")), "contains no audio samples"),
    "corrupt": (lambda p: _bytes(p / "corrupt.wav", b"RIFF\x00\x00\x00\x00WAVEfmt garbage"), "not a readable audio file"),
    "nan": (lambda p: _float_wav_with_nan(p / "nan.wav"), "NaN"),
    "ten_minutes": (lambda p: _wav(p / "long.wav", np.zeros(16000 * 600, "<i2")), "longer than 120 s"),
    "missing": (lambda p: p / "nowhere.wav", "no such file"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_clear_line_and_nothing_is_written(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, expected = BAD_INPUTS[case]
    bad = make(tmp_path)
    out = tmp_path / "out"
    code = main(["talk", "--input", str(SAMPLES / "question.wav"), "--input", str(bad), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("avatarchat: error: ") and "\n" not in err and "Traceback" not in err
    assert expected in err and bad.name in err
    assert not out.exists(), "a failed run must not leave a half-written output folder"


def test_odd_rates_and_quiet_stereo_are_read_correctly(tmp_path: Path) -> None:
    t = np.arange(11025) / 11025
    tone = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    audio = load_audio(_wav(tmp_path / "odd.wav", tone, rate=11025), 16000)
    assert abs(len(audio) - 16000) <= 32
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16000 / len(audio) - 440) < 5  # pitch survives resampling


def test_write_wav_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav", np.zeros(100, np.float32), 16000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]
    assert (tmp_path / "a.wav").stat().st_mode & 0o044  # readable like any other file


def test_short_and_long_options_keep_the_turns_kinds_and_order() -> None:
    # -i once read as typed text: the file's name went to the LLM as the question.
    from avatarchat.cli.main import build_parser

    args = build_parser().parse_args(["talk", "-i", "q1.wav", "-t", "Hello", "--input", "q2.wav",
                                      "--text", "Bye", "-o", "out"])
    assert args.turns == [("audio", "q1.wav"), ("text", "Hello"), ("audio", "q2.wav"), ("text", "Bye")]
