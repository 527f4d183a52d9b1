"""``avatarchat talk`` with Chinese text, whatever the terminal's locale (real models).

Under a C locale without UTF-8 mode Python hands the program ``你好`` as lone surrogates;
before talk decoded them, the language model refused them and the turn failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from avatarchat.cli.errors import UserError
from avatarchat.cli.talk import argument_text
from tests.configs import greedy_default

#: How Python decodes the UTF-8 bytes of 你好 under an ASCII locale (surrogateescape).
ESCAPED = "\udce4\udcbd\udca0\udce5\udca5\udcbd"


def test_an_argument_the_locale_could_not_decode_is_read_as_utf8() -> None:
    assert argument_text(ESCAPED) == "你好"
    assert argument_text("你好, hello") == "你好, hello"  # decoded already: as it is
    assert argument_text("plain") == "plain"
    with pytest.raises(UserError, match="neither UTF-8"):
        argument_text("\udcff\udcfe")  # bytes that are no UTF-8


@pytest.mark.slow
@pytest.mark.parametrize("locale", [
    # Python's own defaults under C: the locale coerced to C.UTF-8, UTF-8 mode on.
    {"LC_ALL": "C"},
    # Neither: arguments, stdout and stderr are ASCII.
    {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"},
])
def test_talk_answers_chinese_text_and_writes_it_as_utf8(tmp_path: Path, locale: dict[str, str]) -> None:
    out = tmp_path / "out"
    config = greedy_default(tmp_path, without=("avatar",))  # the same reply every run
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **locale}
    proc = subprocess.run([sys.executable, "-m", "avatarchat.cli.main", "talk", "--text", "你好", "--config", str(config),
                           "--out", str(out)], env=env, capture_output=True, timeout=300)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "ERROR" not in err, err[-3000:]
    # The progress lines say what was asked: as characters where stderr takes them, else escaped.
    assert "you:    '你好'" in err or r"you:    '\u4f60\u597d'" in err, err[-1000:]

    raw = (out / "transcript.json").read_bytes()
    assert "你好".encode() in raw  # characters, not \u escapes
    turn = json.loads(raw.decode("utf-8"))["turns"][0]
    assert turn["input"] == {"text": "你好"} and turn["user"] == "你好"
    assert turn["error"] is None and turn["reply"].strip() and turn["audio_seconds"] > 0.3, turn
