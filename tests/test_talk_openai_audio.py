"""`avatarchat talk` end to end with the ``openai`` ASR and TTS against the local server of
OpenAI's audio API (the embedded VAD, LLM and avatar around them): the whole pipeline takes
the services' streamed, phoneme-less voice and their transcripts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from avatarchat.cli.main import main
from avatarchat.config import DEFAULT_CONFIG
from avatarchat.testing.services.base import GOOD_KEY, LocalService
from avatarchat.testing.services.openai_audio import app

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@pytest.mark.slow
def test_talk_hears_and_answers_through_the_openai_audio_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A spoken question: the server transcribes it, the local LLM answers, the server speaks
    the answer in pieces; talk writes the reply's audio and the avatar's video of it."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["llm"]["temperature"] = 0.0
    config["asr"] = {"handler": "openai", "base_url": "${OPENAI_BASE_URL}", "api_key": "${OPENAI_API_KEY}",
                     "model": "whisper-1"}
    config["tts"] = {"handler": "openai", "base_url": "${OPENAI_BASE_URL}", "api_key": "${OPENAI_API_KEY}",
                     "model": "tts-1", "voice": "alloy"}
    path = tmp_path / "openai_audio.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = tmp_path / "out"
    with LocalService(app, delay_ms=50) as svc:
        monkeypatch.setenv("OPENAI_BASE_URL", f"{svc.url}/v1")
        monkeypatch.setenv("OPENAI_API_KEY", GOOD_KEY)
        code = main(["talk", "--input", str(SAMPLES / "question.wav"), "--out", str(out), "--config", str(path)])
        spoken = [e["body"]["input"] for e in svc.seen if e["path"] == "/v1/audio/speech"]
    assert code == 0, capsys.readouterr().err
    (turn,) = json.loads((out / "transcript.json").read_text(encoding="utf-8"))["turns"]
    assert "capital of france" in turn["user"].lower(), turn
    assert turn["reply"].strip(), turn
    assert spoken[0] == "Hi." and len(spoken) > 1  # load's check, then the reply's clauses
    assert " ".join(spoken[1:]).replace(" ", "") in turn["reply"].replace(" ", ""), (spoken, turn["reply"])
    assert (out / "turn-1.wav").stat().st_size > 24000 * 2 * 0.5  # over half a second of speech
    assert (out / "turn-1.mp4").stat().st_size > 10_000
