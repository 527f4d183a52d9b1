"""Config validation: every mistake is caught before any model loads, with the file,
the key path and the allowed values in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from avatarchat.cli.main import main
from avatarchat.config import DEFAULT_CONFIG, ConfigError, load_config
from avatarchat.engine.config import PipelineConfig, load_pipeline_config
from avatarchat.server.settings import ServerSettings

GOOD = """
session: {history_turns: 2}
vad: {handler: silero}
asr: {handler: whisper}
llm: {handler: local}
tts: {handler: hibari}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


def test_the_embedded_default_is_valid() -> None:
    config = load_config()
    assert config.path == str(DEFAULT_CONFIG)
    assert {s: c.handler for s, c in config.stages.items()} == {
        "vad": "silero", "turn": "smart_turn", "asr": "whisper", "llm": "local", "tts": "hibari",
        "avatar": "portrait",
    }
    assert config.stages["llm"].options.threads == 1  # type: ignore[attr-defined]
    eot = config.session.end_of_turn
    assert (eot.complete_ms, eot.unfinished_ms, eot.doubtful_ms, eot.speculate) == (250, 1600, 900, True)
    assert config.server == ServerSettings()


def test_an_unknown_handler_names_the_key_and_the_choices(tmp_path: Path) -> None:
    msg = error_of(tmp_path, GOOD.replace("handler: hibari", "handler: kokoro"))
    assert "c.yaml: tts.handler: unknown handler 'kokoro'" in msg
    assert "espeak" in msg and "hibari" in msg


def test_an_unknown_key_names_the_path_and_the_allowed_keys(tmp_path: Path) -> None:
    msg = error_of(tmp_path, GOOD.replace("{handler: local}", "{handler: local, temprature: 0.3}"))
    assert "llm.temprature: unknown key" in msg and "temperature" in msg


def test_a_wrong_type_names_the_path_and_the_value(tmp_path: Path) -> None:
    msg = error_of(tmp_path, GOOD.replace("{history_turns: 2}", "{history_turns: many}"))
    assert "session.history_turns" in msg and "'many'" in msg


def test_a_wrong_literal_lists_the_allowed_values(tmp_path: Path) -> None:
    msg = error_of(tmp_path, GOOD.replace("{handler: whisper}", "{handler: whisper, model: large}"))
    assert "asr.model" in msg and "tiny.en" in msg and "base" in msg


def test_missing_and_unknown_sections(tmp_path: Path) -> None:
    assert "tts: missing section" in error_of(tmp_path, GOOD.replace("tts: {handler: hibari}", ""))
    assert "avatar2: unknown section" in error_of(tmp_path, GOOD + "avatar2: {}\n")
    assert "not valid YAML" in error_of(tmp_path, "vad: [unclosed")
    assert "top level must be a mapping" in error_of(tmp_path, "- a\n- b\n")


def test_environment_substitution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVATAR_TEST_PROMPT", "Be brief.")
    monkeypatch.delenv("AVATAR_TEST_UNSET", raising=False)
    text = GOOD.replace(
        "{history_turns: 2}",
        '{system_prompt: "${AVATAR_TEST_PROMPT}", language: "${AVATAR_TEST_UNSET:-de}"}',
    )
    config = load_config(write(tmp_path, text))
    assert config.session.system_prompt == "Be brief." and config.session.language == "de"
    msg = error_of(tmp_path, GOOD.replace("{history_turns: 2}", '{language: "${AVATAR_TEST_UNSET}"}'))
    assert "session.language: environment variable AVATAR_TEST_UNSET is not set" in msg


def test_check_config_cli_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, GOOD.replace("handler: silero", "handler: nope"))
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("avatarchat: error: ") and "vad.handler" in err
    assert main(["check-config", str(write(tmp_path, GOOD))]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["check-config", str(tmp_path / "missing.yaml")]) == 2
    assert "no such config file" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "old", "new"), [
    ("vad: {handler: silero, complete_ms: 250}", "vad.complete_ms", "session.end_of_turn.complete_ms"),
    ("vad: {handler: silero, unfinished_ms: 0}", "vad.unfinished_ms", "session.end_of_turn.unfinished_ms"),
    ("server: {barge_in: {enabled: false}}", "server.barge_in.enabled", "session.barge_in.enabled"),
    ("server: {barge_in: {min_speech_ms: 250}}", "server.barge_in.min_speech_ms", "session.barge_in.min_speech_ms"),
    ("server: {barge_in: {duck_volume: 0.3, client_mute: true}}", "server.barge_in.duck_volume",
     "session.barge_in.duck_volume"),
    ("server: {barge_in: {echo_guard: true}}", "server.barge_in.echo_guard", "server.echo_guard"),
])
def test_a_moved_key_is_one_line_naming_its_new_place(tmp_path: Path, text: str, old: str, new: str) -> None:
    good = GOOD.replace("vad: {handler: silero}", "") if text.startswith("vad:") else GOOD
    msg = error_of(tmp_path, good + text + "\n")
    assert msg == f"{tmp_path / 'c.yaml'}: {old}: moved to {new}"


def test_the_new_places_of_moved_keys_load(tmp_path: Path) -> None:
    text = GOOD.replace("{history_turns: 2}", "{barge_in: {enabled: false, min_speech_ms: 250, duck_volume: 0.3}, "
                                              "end_of_turn: {complete_ms: 300, unfinished_ms: 2000}}")
    session = load_config(write(tmp_path, text + "server: {barge_in: {client_mute: false}}\n")).session
    assert (session.barge_in.enabled, session.barge_in.min_speech_ms, session.barge_in.duck_volume) == (False, 250, 0.3)
    assert (session.end_of_turn.complete_ms, session.end_of_turn.unfinished_ms) == (300, 2000)
    assert "session.end_of_turn.complete_ms: Input should be less than or equal to 10000" in error_of(
        tmp_path, GOOD.replace("{history_turns: 2}", "{end_of_turn: {complete_ms: 10001}}"))


def test_the_engine_alone_reads_its_own_sections_and_no_server(tmp_path: Path) -> None:
    config = load_pipeline_config(write(tmp_path, GOOD))
    assert type(config) is PipelineConfig and config.stages["tts"].handler == "hibari"
    with pytest.raises(ConfigError) as info:
        load_pipeline_config(write(tmp_path, GOOD + "server: {port: 8000}\n"))
    assert str(info.value).endswith("c.yaml: server: unknown section; allowed: session, vad, asr, turn, s2s, llm, tts, avatar")


def test_every_config_shipped_in_the_repository_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The configs the README and the benches name (a moved key once broke configs/voice.yaml)."""
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    shipped = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert shipped
    for path in shipped:
        load_config(path)
