"""SmolLM2 re-encoded from Q4_1 to Q8_0 (``handlers.llm.gguf_q8``): the values, the pinned
file, and llama.cpp's replies on it. Real model, real llama.cpp."""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avatarchat.handlers.llm.gguf_q8 import GGUFError, q4_1_to_q8_0, q8_0_file, reencode
from avatarchat.handlers.llm.local import SMOLLM2_135M, SMOLLM2_Q8_0


def q4_1_values(raw: bytes) -> np.ndarray:
    """Q4_1 blocks as llama.cpp reads them: element j < 16 in byte j's low nibble, j + 16 in
    its high nibble, value d * q + m."""
    out = []
    for b in np.frombuffer(raw, np.uint8).reshape(-1, 20):
        d, m = b[0:4].copy().view(np.float16).astype(np.float32)
        q = [int(v) & 15 for v in b[4:]] + [int(v) >> 4 for v in b[4:]]
        out.append([d * x + m for x in q])
    return np.array(out, np.float32)


def q8_0_values(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    blocks = np.frombuffer(raw, np.uint8).reshape(-1, 34)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    return d * blocks[:, 2:].view(np.int8).astype(np.float32), d


def q4_1_block(d: float, m: float, q: list[int]) -> bytes:
    nibbles = bytes(q[j] | (q[j + 16] << 4) for j in range(16))
    return np.array([d, m], np.float16).tobytes() + nibbles


def test_each_value_keeps_within_half_a_q8_step() -> None:
    rng = np.random.default_rng(3)
    raw = b"".join(q4_1_block(float(rng.uniform(1e-3, 0.1)), float(rng.uniform(-0.8, 0.0)),
                              [int(v) for v in rng.integers(0, 16, 32)]) for _ in range(200))
    raw += q4_1_block(0.0, 0.0, [0] * 32)  # an all-zero block: scale 0, no division by it
    x = q4_1_values(raw)
    y, d = q8_0_values(q4_1_to_q8_0(raw))
    # Half a step, and the step's own rounding to f16 over up to 127 steps.
    assert np.all(np.abs(y - x) <= d * 0.5 + np.abs(x).max(axis=1, keepdims=True) * 2 ** -10 + 1e-9)
    assert np.all(y[-1] == 0)


def test_the_element_order_is_llama_cpps() -> None:
    # Low nibbles first: a swap of the halves would turn this ramp into another.
    ramp = list(range(16)) + [15 - j for j in range(16)]
    y, _ = q8_0_values(q4_1_to_q8_0(q4_1_block(0.5, -1.0, ramp)))
    expected = np.array([0.5 * q - 1.0 for q in ramp], np.float32)
    assert np.allclose(y[0], expected, atol=6.5 / 127 / 2 + 1e-3)


@pytest.fixture(scope="module")
def q8_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder, filename, sha256 = SMOLLM2_Q8_0
    return q8_0_file(SMOLLM2_135M, tmp_path_factory.mktemp("models") / folder, filename, sha256)


def test_the_reencoding_is_the_pinned_file_and_is_made_once(q8_path: Path) -> None:
    _folder, filename, sha256 = SMOLLM2_Q8_0
    assert q8_path.name == filename
    mtime = q8_path.stat().st_mtime_ns
    assert q8_0_file(SMOLLM2_135M, q8_path.parent, filename, sha256) == q8_path
    assert q8_path.stat().st_mtime_ns == mtime
    assert [p.name for p in q8_path.parent.iterdir()] == [filename]  # no temporary left


def test_a_damaged_copy_is_made_again(q8_path: Path, tmp_path: Path) -> None:
    _folder, filename, sha256 = SMOLLM2_Q8_0
    copy = tmp_path / filename
    copy.write_bytes(q8_path.read_bytes()[:-1000] + b"\0" * 1000)
    assert q8_0_file(SMOLLM2_135M, tmp_path, filename, sha256) == copy
    assert copy.read_bytes() == q8_path.read_bytes()


def test_a_file_that_is_no_gguf_is_refused_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + b"\0" * 64)
    with pytest.raises(GGUFError, match="not a GGUF"):
        reencode(bad, io.BytesIO())
    bad.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 1))  # a key/value promised, none there
    with pytest.raises(GGUFError, match="ends inside its header"):
        reencode(bad, io.BytesIO())


def test_an_unwritable_folder_runs_the_shipped_file_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _folder, filename, sha256 = SMOLLM2_Q8_0
    with caplog.at_level(logging.WARNING, logger="avatarchat.handlers.llm.gguf_q8"):
        assert q8_0_file(SMOLLM2_135M, blocker / "models", filename, sha256) == SMOLLM2_135M.locate()
    assert "cannot write the Q8_0 model" in caplog.text


def greedy_replies(path: Path, questions: list[str]) -> list[str]:
    import xllamacpp

    params: Any = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx, params.n_parallel, params.verbosity = 1024, 1, 0
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 1
    params.hostnames, params.port, params.n_threads_http, params.ui = ["127.0.0.1"], 0, 1, False
    server = xllamacpp.Server(params)
    replies = []
    for q in questions:
        r = server.handle_chat_completions({
            "messages": [{"role": "system", "content": "You are a helpful AI assistant named Ava."},
                         {"role": "user", "content": q}],
            "max_tokens": 20, "temperature": 0.0})
        replies.append(r["choices"][0]["message"]["content"])
    del server
    return replies


def test_llama_cpp_answers_the_same_on_both_encodings(q8_path: Path) -> None:
    questions = ["What is the capital of France?", "Why is the sky blue?", "How do I boil an egg?",
                 "What is your favourite colour?", "Tell me a fun fact about octopuses."]
    shipped = greedy_replies(SMOLLM2_135M.locate(), questions)
    ours = greedy_replies(q8_path, questions)
    assert all(len(r.split()) >= 3 for r in ours), ours
    assert "Paris" in ours[0]
    # Greedy decoding follows the largest logit: a re-encoding that moved the weights
    # visibly would change how these replies open. (Later words may part: a 135M model's
    # greedy path turns on small differences, and llama.cpp also rounds the activations
    # differently for Q8_0; bench quality: 11 of 20 right against 8 for the shipped file.)
    same_start = sum(a.split()[:2] == b.split()[:2] for a, b in zip(shipped, ours, strict=True))
    assert same_start >= 4, list(zip(shipped, ours, strict=True))


@pytest.mark.parametrize("q8_0", [True, False])
def test_the_local_llm_runs_the_q8_0_copy_unless_told_not_to(
        q8_0: bool, q8_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from avatarchat.handlers.llm.local import LocalLLM, LocalLLMOptions

    # The module's copy stands in for the venv's: the same folder layout, already made.
    monkeypatch.setenv("AVATARCHAT_MODELS_DIR", str(q8_path.parent.parent))
    path = LocalLLM(LocalLLMOptions(q8_0=q8_0))._model_path()
    assert path == (q8_path if q8_0 else SMOLLM2_135M.locate())
