"""A third-party handler runs the packaged conformance suite from its own repository.

In ``tmp_path``: a package ``toyllm`` (two LLM handlers registered through an
``avatarchat.handlers`` entry point, as an installer writes it: a ``.dist-info`` with
``entry_points.txt`` on the path) and a repository folder with no conftest and no ini, so
pytest-asyncio runs in its strict mode, as it would in a stranger's project. Then
``python -m pytest -p avatarchat.testing.plugin --pyargs avatarchat.testing.conformance``
runs in a subprocess, as the README says, and its JUnit report tells which case passed.

The handlers are tiny scripted LLMs, not models: the test is about the harness.
``toy_echo`` is correct but needs an option without a default, so it is built by a factory
(``--avatarchat-factories``). ``toy_stubborn`` is broken on purpose: its generation runs in
a task of its own that closing the stream does not stop, so a cancelled turn goes on
generating.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

TOYLLM = '''
"""Two scripted LLM handlers, one correct and one that ignores cancellation."""

import asyncio

from avatarchat.engine.handler import HandlerOptions, register
from avatarchat.handlers.llm.base import ChatLLM

WORDS = "Once upon a time there was a small dragon who lived in a quiet blue lake".split()


class EchoOptions(HandlerOptions):
    greeting: str  # no default: the suite cannot build this handler without a factory


@register
class EchoLLM(ChatLLM[EchoOptions]):
    name = "toy_echo"
    Options = EchoOptions

    def __init__(self, options):
        super().__init__(options)
        self.active = 0

    def active_generations(self):
        return self.active

    async def stream(self, ctx, messages):
        self.active += 1
        try:
            yield self.options.greeting
            for word in WORDS:
                await asyncio.sleep(0.01)
                yield " " + word
        finally:
            self.active -= 1


@register
class StubbornLLM(ChatLLM[HandlerOptions]):
    """Broken: generation runs in its own task, which nothing stops."""

    name = "toy_stubborn"

    def __init__(self, options):
        super().__init__(options)
        self.active = 0

    def active_generations(self):
        return self.active

    async def _generate(self, queue):
        self.active += 1
        try:
            for word in WORDS:
                await asyncio.sleep(0.05)
                queue.put_nowait(" " + word)
        finally:
            self.active -= 1
            queue.put_nowait(None)

    async def stream(self, ctx, messages):
        queue = asyncio.Queue()
        asyncio.get_running_loop().create_task(self._generate(queue))
        while (word := await queue.get()) is not None:
            yield word
'''

FACTORIES = '''
from avatarchat.testing.conformance.factories import ConformanceFactory
from toyllm import EchoLLM


def _echo(request):
    return EchoLLM(EchoLLM.Options(greeting="Hello"))


FACTORIES = {"toy_echo": ConformanceFactory(build=_echo)}
'''

CASES = {
    "test_cancel_mid_stream_stops_generation",
    "test_reply_end_text_is_the_concatenated_deltas",
    "test_interleaved_turns_are_answered_in_order",
    "test_slow_consumer_gets_every_event_in_order",
    "test_error_mid_stream_ends_only_its_turn",
    "test_empty_transcript_gives_an_empty_reply_end",
    "test_serves_sessions_on_successive_event_loops",
}


def install_toyllm(site: Path) -> None:
    """What an installer leaves on the path: the package and its entry-point metadata."""
    (site / "toyllm").mkdir(parents=True)
    (site / "toyllm" / "__init__.py").write_text(textwrap.dedent(TOYLLM))
    (site / "toyllm" / "conformance.py").write_text(textwrap.dedent(FACTORIES))
    meta = site / "toyllm-0.1.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: toyllm\nVersion: 0.1\n")
    (meta / "entry_points.txt").write_text("[avatarchat.handlers]\ntoyllm = toyllm\n")


def run_suite(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, dict[str, str]]]:
    """The suite in a subprocess from the third party's repository; returns the process and,
    per case (``test_llm_conformance::test_x[handler]``), its outcome ("passed", "failed",
    "skipped") and failure messages."""
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    report = tmp_path / "report.xml"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "avatarchat.testing.plugin", "--pyargs", "avatarchat.testing.conformance",
         "-p", "no:cacheprovider", "-q", f"--junitxml={report}", *args],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300,
    )
    outcomes: dict[str, dict[str, str]] = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            # A failed case has a <failure>, one whose fixture failed an <error>; a teardown
            # error (a leaked task) comes as a second <testcase> of the same name.
            module = case.get("classname", "").rpartition(".")[2]
            entry = outcomes.setdefault(f"{module}::{case.get('name', '')}", {"outcome": "passed", "message": ""})
            for bad in (case.find("failure"), case.find("error")):
                if bad is not None:
                    entry["outcome"] = "failed"
                    entry["message"] += f"{bad.get('message', '')}\n{bad.text or ''}\n"
            if case.find("skipped") is not None and entry["outcome"] == "passed":
                entry["outcome"] = "skipped"
    return proc, outcomes


def case(key: str) -> str:
    """``test_x`` of ``module::test_x[handler]``."""
    return key.partition("::")[2].partition("[")[0]


def test_a_third_party_handler_runs_the_packaged_suite_with_its_factory(tmp_path: Path) -> None:
    install_toyllm(tmp_path / "site")
    proc, outcomes = run_suite(
        tmp_path, "--avatarchat-handler", "llm:toy_echo", "--avatarchat-handler", "llm:toy_stubborn",
        "--avatarchat-factories", "toyllm.conformance",
    )
    log = proc.stdout[-4000:] + proc.stderr[-2000:]
    echo = {case(name): o for name, o in outcomes.items() if name.endswith("[toy_echo]")}
    stubborn = {case(name): o for name, o in outcomes.items() if name.endswith("[toy_stubborn]")}
    # Every LLM case ran on both; no built-in handler was tested; TTS and avatar cases had none.
    assert set(echo) == set(stubborn) == CASES, log
    assert all(o["outcome"] == "skipped" for n, o in outcomes.items() if "[toy_" not in n), log
    assert {n: o["outcome"] for n, o in echo.items()} == dict.fromkeys(CASES, "passed"), log
    # The broken one fails the cases that stop a generation early, and only those.
    failed = {n for n, o in stubborn.items() if o["outcome"] == "failed"}
    assert failed == {"test_cancel_mid_stream_stops_generation", "test_error_mid_stream_ends_only_its_turn"}, log
    assert "still ran 0.5 s after cancel_turn" in stubborn["test_cancel_mid_stream_stops_generation"]["message"]
    assert proc.returncode == 1, log


def test_a_handler_that_is_not_registered_or_has_no_factory_is_told_what_to_do(tmp_path: Path) -> None:
    install_toyllm(tmp_path / "site")
    proc, _ = run_suite(tmp_path, "--avatarchat-handler", "llm:nonesuch")
    said = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "no llm handler named 'nonesuch' is registered" in said, said[-3000:]
    assert "entry point in the 'avatarchat.handlers' group" in said

    proc, outcomes = run_suite(tmp_path, "--avatarchat-handler", "llm:toy_echo", "-k", "concatenated")
    result = outcomes["test_llm_conformance::test_reply_end_text_is_the_concatenated_deltas[toy_echo]"]
    assert result["outcome"] == "failed", proc.stdout[-3000:]
    assert "has no conformance factory and cannot be built with default options" in result["message"]
    assert "--avatarchat-factories" in result["message"]
