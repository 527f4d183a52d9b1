"""The fakes of ``avatarchat.testing`` keep the contracts of the handlers they stand for: the
packaged conformance suite passes on ``FakeLLM`` and ``FakeTTS``, registered through an
entry point as a third party would register them (see tests/test_testing_thirdparty.py).

The fast engine tests trust the fakes to behave like real handlers (stream, stop when
cancelled, fail one turn only, say nothing for emoji); this is where that trust is earned.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.test_testing_thirdparty import run_suite

REGISTER = '''
"""The fakes, registered like any handler."""

from avatarchat.engine.handler import register
from avatarchat.testing import FakeLLM, FakeTTS

register(FakeLLM)
register(FakeTTS)
'''

FACTORIES = '''
from avatarchat.testing import FakeLLM, FakeTTS, FakeTTSOptions
from avatarchat.testing.conformance.factories import ConformanceFactory

STORY = "Once upon a time a small dragon lived by a quiet lake, and every morning it swam across it."

FACTORIES = {
    # The suite's clock is the real one: the fake model's tokens come 20 ms apart.
    "llm:fake": ConformanceFactory(build=lambda request: FakeLLM([STORY], first_token_s=0.02, token_s=0.02)),
    # A voice takes time: 50 ms a clause, on the loop; its blocking core is synthesize().
    "tts:fake": ConformanceFactory(build=lambda request: FakeTTS(FakeTTSOptions(synth_ms=50)),
                                   core=lambda handler: (handler, "synthesize")),
}
'''


def test_the_fake_llm_and_tts_pass_the_conformance_suite(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "fakehandlers").mkdir(parents=True)
    (site / "fakehandlers" / "__init__.py").write_text(textwrap.dedent(REGISTER))
    (site / "fakehandlers" / "conformance.py").write_text(textwrap.dedent(FACTORIES))
    meta = site / "fakehandlers-0.1.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: fakehandlers\nVersion: 0.1\n")
    (meta / "entry_points.txt").write_text("[avatarchat.handlers]\nfakes = fakehandlers\n")

    proc, outcomes = run_suite(tmp_path, "--avatarchat-handler", "llm:fake", "--avatarchat-handler", "tts:fake",
                               "--avatarchat-factories", "fakehandlers.conformance")
    ran = {name: o for name, o in outcomes.items() if "[fake" in name}
    log = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert len(ran) == 7 + 8, log  # every LLM case, every TTS case (one of them for 3 texts)
    assert {n: o["outcome"] for n, o in ran.items()} == dict.fromkeys(ran, "passed"), log
    assert proc.returncode == 0, log
