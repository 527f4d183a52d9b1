"""A config file is untrusted input: whatever it holds, loading it ends in a config or in one
line naming the file (``ConfigError``), before anything big is built; and nothing that prints
a config shows a secret."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from avatarchat.cli.main import main
from avatarchat.engine import yaml_limits
from avatarchat.config import ConfigError, load_config, redact
from avatarchat.engine.config import MAX_CONFIG_BYTES

STAGES = """
vad: {handler: silero}
asr: {handler: whisper}
llm: {handler: local}
tts: {handler: hibari}
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def refusal(path: Path) -> str:
    """The ConfigError ``load_config`` raises for ``path``, checked to be one line naming it."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    return msg


def laughs(levels: int) -> str:
    """A 'billion laughs': each level is nine aliases of the level before, 9**levels values."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    # 9**20 values: if any step expanded the aliases, this would never finish.
    path = write(tmp_path, laughs(20))
    assert len(path.read_bytes()) < 1500
    tracemalloc.start()
    try:
        msg = refusal(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "aliases expand to more than" in msg and "line " in msg
    assert peak < 10_000_000  # the text's graph, never the expansion


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    assert "its own anchor" in refusal(write(tmp_path, "session: &s {x: *s}\n" + STAGES))
    assert "its own anchor" in refusal(write(tmp_path, "llm: &l {handler: local, logit_bias: {<<: *l}}\n"))


@pytest.mark.parametrize("text", [
    "vad: " + "[" * 100_000 + "\n",                              # flow sequences
    "vad: " + "{a: " * 50_000 + "\n",                            # flow mappings
    "".join(" " * i + "a:\n" for i in range(300)),               # block mappings
    "a: &a " + "[" * 20 + "x" + "]" * 20 + "\nb: " + "[" * 20 + "*a" + "]" * 20 + "\n",  # via an alias
], ids=["flow-seq", "flow-map", "block", "alias"])
def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path: Path, text: str) -> None:
    msg = refusal(write(tmp_path, text))
    assert "nest" in msg and "Recursion" not in msg


def test_too_many_values_are_refused_with_or_without_aliases(tmp_path: Path) -> None:
    # 11,000 entries: 22,000 nodes (a key and a value each)
    flat = "llm:\n  handler: local\n  logit_bias: {" + ", ".join(f"w{i}: -1" for i in range(11_000)) + "}\n"
    assert len(flat) < MAX_CONFIG_BYTES
    assert f"more than {yaml_limits.MAX_NODES} values" in refusal(write(tmp_path, flat))
    flood = "session: {language: &l en}\nserver: {allowed_origins: [" + "*l, " * 30_000 + "]}\n"
    assert f"more than {yaml_limits.MAX_NODES} values" in refusal(write(tmp_path, flood))


def test_an_oversized_file_is_refused_unread_and_one_just_under_loads(tmp_path: Path) -> None:
    padded = STAGES + "#" * (MAX_CONFIG_BYTES - len(STAGES) - 1) + "\n"
    assert len(padded) == MAX_CONFIG_BYTES
    assert load_config(write(tmp_path, padded)).stages["llm"].handler == "local"
    msg = refusal(write(tmp_path, padded + "\n"))
    assert f"larger than {MAX_CONFIG_BYTES // 1024} KiB" in msg


def test_a_device_is_read_only_up_to_the_limit(tmp_path: Path) -> None:
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    assert "larger than" in refusal(Path("/dev/zero"))


def test_configs_with_anchors_within_the_budget_still_load(tmp_path: Path) -> None:
    text = """
session:
  system_prompt: &persona "You are Ava."
  language: &lang en
  barge_in: {<<: &barge {enabled: true, min_speech_ms: 250}, duck_volume: 0.3}
vad: &vad {handler: silero, end_ms: 700}
asr: {handler: whisper, language: *lang}
llm:
  handler: local
  logit_bias: {%s}
tts: {handler: hibari}
server:
  allowed_origins: [%s]
""" % (", ".join(f'" w{i}": *bias' if i else '" w0": &bias -4' for i in range(500)),
       ", ".join(["&o https://a.example" if i == 0 else "*o" for i in range(2000)]))
    config = load_config(write(tmp_path, text))
    assert config.session.system_prompt == "You are Ava."
    assert config.stages["asr"].options.language == "en"  # type: ignore[attr-defined]
    bias = config.stages["llm"].options.logit_bias  # type: ignore[attr-defined]
    assert len(bias) == 500 and set(bias.values()) == {-4.0}
    assert config.server.allowed_origins == ["https://a.example"] * 2000
    assert config.session.barge_in.min_speech_ms == 250 and config.session.barge_in.duck_volume == 0.3


@pytest.mark.parametrize("text, expected", [
    ("vad: [unclosed\n", "not valid YAML at line 2, column 1"),
    ("vad:\n\t- x\n", "not valid YAML at line 2"),
    ("vad: \x00\n", "not valid YAML: unacceptable character"),
    ("vad: !!python/object/apply:os.system [echo]\n", "could not determine a constructor"),
    ("a: 1\n---\nb: 2\n", "another document"),
    ("a: &x 1\nb: &x 2\n", "duplicate anchor"),
    ("a: *nope\n", "undefined alias"),
], ids=["unclosed", "tab", "nul", "python-tag", "two-docs", "dup-anchor", "undefined-alias"])
def test_bad_yaml_is_one_line_with_the_place(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in refusal(write(tmp_path, text))


def test_the_cli_refuses_a_hostile_config_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, laughs(12))
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"avatarchat: error: {path}: ")


SECRETS = {
    "LLM_KEY": "sk-llm-0123456789",
    "URL_PASS": "urlpass-0123456789",
    "AUTH_SECRET": "auth-secret-0123456789abcdefghijklmnop",
    "TURN_SECRET": "turn-secret-0123456789",
    "ICE_CRED": "ice-cred-0123456789",
}

SECRET_CONFIG = STAGES.replace(
    "llm: {handler: local}",
    'llm: {handler: openai_compatible, api_key: "${LLM_KEY}", api_url: "https://ava:${URL_PASS}@llm.example/v1"}',
) + """
server:
  auth: {secret: "${AUTH_SECRET}"}
  turn: {urls: ["turn:127.0.0.1:3478"], secret: "${TURN_SECRET}"}
  ice_servers:
    - {urls: ["turn:127.0.0.1:3478"], username: ava, credential: "${ICE_CRED}"}
    - {urls: ["stun:127.0.0.1:3478"]}
"""


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """The real ``avatarchat check-config``, in its own process, with the secrets in its env."""
    env = {**os.environ, **SECRETS}
    return subprocess.run([sys.executable, "-m", "avatarchat.cli.main", "check-config", str(path)],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def test_check_config_masks_every_secret_and_says_which_are_set(tmp_path: Path) -> None:
    done = check_config(write(tmp_path, SECRET_CONFIG))
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    for value in SECRETS.values():
        assert value not in out
    assert "api_key=***" in out and "api_url='https://ava:***@llm.example/v1'" in out
    assert "server.auth secret=***" in out and "server.turn urls=['turn:127.0.0.1:3478'], secret=***" in out
    assert "'username': 'ava', 'credential': ***}" in out and "'credential': None}" in out
    unset = check_config(write(tmp_path, STAGES))
    assert unset.returncode == 0 and "server.auth secret=None" in unset.stdout


def test_a_refused_secret_is_not_echoed(tmp_path: Path) -> None:
    text = STAGES + 'server: {auth: {secret: ["${AUTH_SECRET}"]}}\n'
    done = check_config(write(tmp_path, text))
    assert done.returncode == 2 and "server.auth.secret" in done.stderr
    assert SECRETS["AUTH_SECRET"] not in done.stderr and "***" in done.stderr


def test_redact_keeps_structure_and_whether_a_secret_is_set() -> None:
    data = {"api_key": "k", "token": "", "password": None, "max_tokens": 48, "keyfile": "key.pem",
            "nested": [{"credential": "c", "urls": ["turn:u:p@h"]}], "url": "http://u:p@h/x"}
    shown = redact(data)
    assert repr(shown["api_key"]) == "***" and f"{shown['api_key']}" == "***"
    assert shown["token"] == "" and shown["password"] is None
    assert shown["max_tokens"] == 48 and shown["keyfile"] == "key.pem"
    assert repr(shown["nested"][0]["credential"]) == "***" and shown["url"] == "http://u:***@h/x"
    assert data["api_key"] == "k"  # a copy: the config itself keeps its values
