"""``avatarchat bench e2e``'s own parts, without a browser: the split of a turn, answers during
a mid-sentence pause, speculations and concealment from the page's figures, the variants
of a run (a baseline checkout first), the fake microphone's pauses (real hibari), and a
server served from another checkout's source.

The page's recordings here are hand-made (segments and envelopes in page ms, as
``window.avatarchat`` gives them): the bench's arithmetic is what is under test; the real
page and server are measured by the command itself.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avatarchat.bench.e2e import side_by_side, source_env, variants
from avatarchat.bench.e2e_mic import (
    FAKE_MIC_RATE,
    PAUSED_QUESTIONS,
    PAUSES_S,
    paused_questions,
    QUESTIONS_ZH,
    questions_wav,
    with_pause,
    word_boundary,
)
from avatarchat.bench.e2e_turns import concealment, pause_counts, pause_within, speculations, split, turn_rows
from avatarchat.bench.harness import ServeProcess
from avatarchat.engine.events import PhonemeTiming


def envelope(voiced: list[tuple[float, float]], until: float) -> dict[str, list[float]]:
    """A 10 ms envelope: 0.2 inside the ``voiced`` spans, 0 elsewhere."""
    t = list(np.arange(0.0, until, 10.0))
    return {"t": t, "rms": [0.2 if any(a <= x < b for a, b in voiced) else 0.0 for x in t]}


def msg(t: float, **m: Any) -> dict[str, Any]:
    return {"t": t, "dir": "in", "msg": m}


# --- the split ---------------------------------------------------------------------------------


def test_the_split_takes_the_servers_decision_figure_when_it_sends_one() -> None:
    metrics = {"vad_hangover_ms": 250.0, "first_audio_sent_ms": 600.0, "decision_to_first_audio_sent_ms": 340.0}
    assert split(metrics, 800.0) == {"end_to_decision_ms": 250.0, "decision_to_sent_ms": 340.0,
                                     "sent_to_heard_ms": 200.0}


def test_the_split_computes_decision_to_sent_where_the_server_does_not() -> None:
    assert split({"vad_hangover_ms": 350, "first_audio_sent_ms": 700}, 880.0) == {
        "end_to_decision_ms": 350.0, "decision_to_sent_ms": 350.0, "sent_to_heard_ms": 180.0}
    # Nothing heard (an overlapped turn), or no metrics (a cut reply): the parts that exist.
    assert split({"vad_hangover_ms": 350, "first_audio_sent_ms": 700}, None)["sent_to_heard_ms"] is None
    assert split({}, 900.0) == {"end_to_decision_ms": None, "decision_to_sent_ms": None, "sent_to_heard_ms": None}


# --- answers during a pause --------------------------------------------------------------------


def paused_run(reply_at: float, second_reply_at: float | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One question: 1000-1900 ms, a pause to 2500, the rest to 3200; replies at the given times."""
    mic = [{"start": 1000.0, "end": 3200.0}]
    mic_env = envelope([(1000, 1900), (2500, 3200)], 20000)
    remote = [{"start": reply_at, "end": reply_at + 1500}]
    if second_reply_at is not None:
        remote.append({"start": second_reply_at, "end": second_reply_at + 2000})
    messages = [msg(3500, type="transcript", turn=2, text="What is the capital of France?", final=True),
                msg(6000, type="metrics", turn=2, vad_hangover_ms=300, first_audio_sent_ms=650, speculated=1,
                    speculations_dropped=0, first_audio_after_speech_end_ms=630)]
    rows = turn_rows(mic, remote, messages, ["What is the capital of France?"], mic_env)
    return rows, rows[0]


def test_a_reply_first_heard_in_the_pause_is_an_answer_during_the_pause() -> None:
    rows, row = paused_run(reply_at=2200.0, second_reply_at=4100.0)
    assert row["pause_ms"] == pytest.approx(600, abs=20)
    assert row["answered_during_pause"] is True and row["reply_before_end"] is True
    # Still playing at the true end: not a voice-to-voice figure.
    assert row["overlapped_reply"] is True and row["voice_to_voice_ms"] is None
    assert pause_counts(rows) == {"paused_questions": 1, "answers_during_pause": 1, "replies_before_end": 1,
                                  "questions_cut_at_pause": 0, "half_answered": 0}


def test_a_reply_after_the_true_end_is_timed_from_it_and_not_counted() -> None:
    rows, row = paused_run(reply_at=4050.0)
    assert row["answered_during_pause"] is False and row["reply_before_end"] is False
    assert row["voice_to_voice_ms"] == 850.0  # from 3200, the end of "... of France?", not the pause
    assert row["end_to_decision_ms"] == 300.0 and row["decision_to_sent_ms"] == 350.0
    assert row["sent_to_heard_ms"] == 200.0
    assert row["server_ready_to_sent_ms"] == 20.0 and row["server_speculated"] == 1
    assert pause_counts(rows)["answers_during_pause"] == 0


def test_a_reply_heard_during_the_second_half_is_early_but_not_in_the_pause() -> None:
    _, row = paused_run(reply_at=2800.0)
    assert row["answered_during_pause"] is False and row["reply_before_end"] is True


def test_gaps_between_words_are_not_pauses() -> None:
    env = envelope([(0, 400), (520, 900), (1100, 1500)], 3000)  # 120 and 200 ms gaps
    assert pause_within({"start": 0.0, "end": 1500.0}, env) is None
    env = envelope([(0, 400), (520, 900), (1400, 1800)], 3000)
    assert pause_within({"start": 0.0, "end": 1800.0}, env) == (900.0, 1400.0)


def test_a_question_split_in_two_turns_is_matched_to_the_last_one() -> None:
    mic = [{"start": 1000.0, "end": 3200.0}]
    messages = [msg(2300, type="transcript", turn=1, text="What is the capital", final=True),
                msg(2900, type="reply", turn=1, text="The capital", final=False),
                msg(3500, type="transcript", turn=2, text="of France?", final=True),
                msg(6000, type="metrics", turn=2, vad_hangover_ms=300, first_audio_sent_ms=650)]
    mic_env = envelope([(1000, 1900), (2500, 3200)], 20000)
    rows = turn_rows(mic, [{"start": 3280.0, "end": 5000.0}], messages, ["q"], mic_env)
    row = rows[0]
    assert row["final_transcripts"] == 2 and row["heard"] == "What is the capital / of France?"
    assert row["server_first_audio_sent_ms"] == 650
    # Heard 80 ms after the end: the reply to the first half, not to turn 2 (sent 650 ms after it).
    assert row["voice_to_voice_ms"] is None and row["voice_to_voice_cut_ms"] == 80.0
    assert row["sent_to_heard_ms"] is None
    assert row["half_answered"] is True and row["answered_during_pause"] is False
    assert row["cut_at_pause"] is True and row["repeated_final"] is False
    assert pause_counts(rows)["questions_cut_at_pause"] == 1 and pause_counts(rows)["half_answered"] == 1


def test_the_same_final_transcript_twice_is_no_cut() -> None:
    mic = [{"start": 1000.0, "end": 3200.0}]
    messages = [msg(3400, type="transcript", turn=4, text="Why is the sky blue?", final=True),
                msg(3420, type="transcript", turn=5, text="why is the sky blue", final=True),
                msg(6000, type="metrics", turn=4, vad_hangover_ms=300, first_audio_sent_ms=650)]
    row = turn_rows(mic, [{"start": 4000.0, "end": 5000.0}], messages, ["q"])[0]
    assert row["repeated_final"] is True and row["cut_at_pause"] is False
    assert row["server_first_audio_sent_ms"] == 650  # the metrics came under the other turn
    assert row["voice_to_voice_ms"] == 800.0 and row["sent_to_heard_ms"] == 150.0


# --- speculations, concealment -----------------------------------------------------------------


def test_speculations_are_summed_from_the_metrics_or_none_without_them() -> None:
    messages = [msg(1, type="metrics", turn=1, speculated=1, speculations_dropped=2),
                msg(2, type="metrics", turn=3, speculated=0, speculations_dropped=1),
                msg(3, type="metrics", turn=5, speculated=1)]
    assert speculations(messages) == {"speculations_used": 2, "speculations_dropped": 3}
    assert speculations([msg(1, type="metrics", turn=1, vad_hangover_ms=300)]) == {
        "speculations_used": None, "speculations_dropped": None}


def test_concealment_is_the_change_over_the_measured_span() -> None:
    before = {"totalSamplesReceived": 48000, "concealedSamples": 960, "silentConcealedSamples": 480,
              "concealmentEvents": 1, "jitterBufferDelay": 2.0, "jitterBufferEmittedCount": 48000,
              "jitterBufferTargetDelay": 1.5}
    after = {"totalSamplesReceived": 48000 * 11, "concealedSamples": 960 + 4800, "silentConcealedSamples": 480 + 960,
             "concealmentEvents": 4, "jitterBufferDelay": 2.0 + 24000.0, "jitterBufferEmittedCount": 48000 * 11,
             "jitterBufferTargetDelay": 1.5 + 19200.0, "jitterBufferTarget": 20}
    c = concealment(before, after)
    assert c["totalSamplesReceived"] == 480000 and c["concealedSamples"] == 4800 and c["concealmentEvents"] == 3
    assert c["concealed_share"] == 0.01 and c["audible_concealed_share"] == 0.008
    assert c["jitter_buffer_ms"] == 50.0 and c["jitter_buffer_target_ms"] == 40.0
    assert c["jitter_buffer_minimum_ms"] is None  # an older page does not read it
    assert c["jitter_buffer_target_asked"] == 20
    assert concealment(None, None) == {}


# --- variants and the side by side ------------------------------------------------------------


def test_a_baseline_runs_first_from_its_own_source(tmp_path: Path) -> None:
    order = variants(None, baseline=tmp_path, jbt=["0", "off"])
    assert [v.source for v in order] == [tmp_path, None, None, None]
    assert order[0].label.startswith("baseline") and order[1].label.startswith("current")
    assert [v.query for v in order] == ["", "", "jbt=0", "jbt=off"]
    assert [v.label for v in variants("a.yaml", compare="b.yaml")] == ["a.yaml", "b.yaml"]


def test_side_by_side_lines_up_the_pooled_figures() -> None:
    pooled = {"old": {"summary": {"voice_to_voice_ms": {"median": 900.0, "p90": 1000.0}}, "answers_during_pause": 0},
              "new": {"summary": {"voice_to_voice_ms": {"median": 640.0, "p90": 760.0}}, "answers_during_pause": 1}}
    out = side_by_side(pooled)
    assert out["voice_to_voice_ms (median)"] == {"old": 900.0, "new": 640.0}
    assert out["voice_to_voice_ms (p90)"] == {"old": 1000.0, "new": 760.0}
    assert out["answers_during_pause"] == {"old": 0, "new": 1}
    assert out["sent_to_heard_ms (median)"] == {"old": None, "new": None}


def test_a_baseline_server_runs_the_other_checkouts_code(tmp_path: Path) -> None:
    # A stand-in checkout (its `avatarchat serve` answers /healthz with where it runs from
    # and the handler entry points it sees): starting a real older server takes a minute of
    # model loading, and is what the command does; here the question is whose code and
    # whose package metadata the subprocess gets.
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent("""
        [project]
        name = "avatarchat"
        version = "0.0.9"
        [project.entry-points."avatarchat.handlers"]
        vad-old = "avatarchat.handlers.vad.old"
    """))
    main = tmp_path / "src" / "avatarchat" / "cli" / "main.py"
    main.parent.mkdir(parents=True)
    for pkg in (main.parent.parent, main.parent):
        (pkg / "__init__.py").write_text("")
    main.write_text(textwrap.dedent("""
        import http.server, sys
        from importlib.metadata import entry_points
        port = int(sys.argv[sys.argv.index("--port") + 1])
        points = sorted(ep.value for ep in entry_points(group="avatarchat.handlers"))
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = "\\n".join([__file__, *points]).encode()
                self.send_response(200); self.send_header("Content-Length", str(len(body)))
                self.end_headers(); self.wfile.write(body)
            def log_message(self, *a): pass
        http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
    """))
    with ServeProcess(env=source_env(tmp_path, tmp_path / "meta")) as server:
        import urllib.request

        with urllib.request.urlopen(server.url + "healthz", timeout=5) as resp:
            # Its own code, and only its own handlers (not this checkout's newer ones).
            assert resp.read().decode().split("\n") == [str(main), "avatarchat.handlers.vad.old"]
    assert os.environ.get("PYTHONPATH", "") != str(tmp_path / "src")  # this process's is untouched


# --- the fake microphone's pauses -------------------------------------------------------------


def test_a_pause_goes_in_at_the_word_gap_with_faded_edges() -> None:
    phonemes = [PhonemeTiming("w", 0.1, 0.2), PhonemeTiming(" ", 0.2, 0.25), PhonemeTiming("ɪ", 0.25, 0.3),
                PhonemeTiming(" ", 0.3, 0.4), PhonemeTiming("z", 0.4, 0.5)]
    assert word_boundary(phonemes, 1) == pytest.approx(0.225)
    assert word_boundary(phonemes, 2) == pytest.approx(0.35)
    with pytest.raises(ValueError):
        word_boundary(phonemes, 3)
    speech = np.ones(1000, np.float32)
    out = with_pause(speech, 1000, 0.5, 0.3)
    assert len(out) == 1300 and not out[500:800].any()
    assert out[0] == 1.0 and out[499] < 0.25 and out[800] == 0.0 and out[-1] == 1.0


def test_paused_questions_cycle_through_fixed_pauses_in_range() -> None:
    qs = paused_questions(12)
    assert [q[2] for q in qs[:5]] == list(PAUSES_S)
    assert all(0.4 <= q[2] <= 0.8 for q in qs)
    assert qs[0][:2] == PAUSED_QUESTIONS[0] and qs[len(PAUSED_QUESTIONS)][:2] == PAUSED_QUESTIONS[0]


def test_every_paused_question_is_spoken_with_silence_exactly_in_its_pause(tmp_path: Path) -> None:
    from avatarchat.audio.io import load_audio

    asked = paused_questions(len(PAUSED_QUESTIONS))
    spoken = questions_wav(tmp_path / "q.wav", asked, 1.0, 1.0, lambda _: None)
    audio = load_audio(tmp_path / "q.wav", FAKE_MIC_RATE)
    for s, (_, _, pause_s) in zip(spoken, asked):
        assert s.pause is not None and s.start < s.pause[0] < s.pause[1] < s.end
        assert s.pause[1] - s.pause[0] == pytest.approx(pause_s, abs=2e-3)
        a, b = (round(x * FAKE_MIC_RATE) for x in s.pause)
        assert np.abs(audio[a + 100:b - 100]).max() < 1e-3, s.text  # the times are rounded to 1 ms
        # Speech right before and after it: the cut is inside the sentence, not at its end.
        before, after = audio[a - 4800:a], audio[b:b + 4800]
        assert np.abs(before).max() > 0.02 and np.abs(after).max() > 0.02, s.text


def test_a_chinese_config_asks_chinese_questions(tmp_path: Path) -> None:
    """bench e2e reads the language from the config it serves: zh.yaml speaks QUESTIONS_ZH
    (with the Mandarin voice); a config without a session section is English."""
    from avatarchat.bench.e2e import config_language

    assert config_language("configs/zh.yaml") == "zh"
    assert config_language(None) == "en"
    bare = tmp_path / "bare.yaml"
    bare.write_text("vad: {handler: silero}\n")
    assert config_language(str(bare)) == "en"
    assert all(q.endswith(("？", "。")) for q in QUESTIONS_ZH)
