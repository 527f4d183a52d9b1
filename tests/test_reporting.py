"""``server.reporting.TurnReporter`` on its own: the messages, the state and the metrics a
peer sends for its turns, without WebRTC (``test_peer.py`` covers them end to end)."""

from __future__ import annotations

from typing import Any

from avatarchat.engine.events import (
    NO_TURN,
    ErrorEvent,
    ReplyEnd,
    ReplyText,
    TimingMark,
    TurnCancelled,
    UserTranscript,
)
from avatarchat.server.reporting import TurnReporter, turn_timings


class Counters:
    def __init__(self) -> None:
        self.done: list[dict[str, float]] = []
        self.cut: list[tuple[str, dict[str, float]]] = []
        self.errors: list[str] = []

    def turn_done(self, timings_ms: dict[str, float]) -> None:
        self.done.append(timings_ms)

    def turn_cut(self, reason: str, timings_ms: dict[str, float]) -> None:
        self.cut.append((reason, timings_ms))

    def error(self, stage: str) -> None:
        self.errors.append(stage)


def reporter() -> tuple[TurnReporter, list[dict[str, Any]], Counters]:
    sent: list[dict[str, Any]] = []
    counters = Counters()
    return TurnReporter(sent.append, counters), sent, counters


def states(sent: list[dict[str, Any]]) -> list[str]:
    return [m["state"] for m in sent if m["type"] == "state"]


def test_a_turn_goes_thinking_speaking_listening_and_ends_with_metrics() -> None:
    report, sent, counters = reporter()
    report.on_event(TimingMark(1, "speech_end", at=10.0))
    report.on_event(UserTranscript(1, "hi", final=False))
    report.on_event(UserTranscript(1, "hi there"))
    report.on_event(ReplyText(1, "Hel"))
    report.on_event(ReplyText(1, "lo."))
    report.on_event(ReplyEnd(1))
    report.started(1, 10.4)
    report.first_frame(1, 10.45)
    report.finished(1)
    assert [m["type"] for m in sent] == [
        "transcript", "transcript", "state", "reply", "reply", "reply", "state", "metrics", "state",
    ]
    assert states(sent) == ["thinking", "speaking", "listening"]
    final = [m for m in sent if m["type"] == "reply"][-1]
    assert final == {"type": "reply", "turn": 1, "text": "Hello.", "final": True}
    metrics = sent[-2]
    assert metrics["first_audio_sent_ms"] == 400.0 and metrics["first_frame_sent_ms"] == 450.0
    assert counters.done == [{k: v for k, v in metrics.items() if k not in ("type", "turn")}]


def test_a_reply_cut_at_the_token_cap_ends_with_what_was_said() -> None:
    report, sent, _ = reporter()
    report.on_event(UserTranscript(1, "Tell me about the moon."))
    for delta in ("The moon is round.", " It has two", " full"):
        report.on_event(ReplyText(1, delta))
    report.on_event(ReplyEnd(1, "The moon is round.", truncated=True))  # as the TTS passes it on
    final = [m for m in sent if m["type"] == "reply"][-1]
    assert final == {"type": "reply", "turn": 1, "text": "The moon is round.", "final": True, "truncated": True}


def test_a_cancelled_or_cut_turn_sends_no_metrics() -> None:
    report, sent, counters = reporter()
    report.on_event(UserTranscript(1, "a"))
    report.on_event(ReplyEnd(1, "b"))
    report.on_event(TurnCancelled(1))
    report.finished(1)  # a late playout callback for it
    report.on_event(UserTranscript(2, "c"))
    report.drop(2)
    assert not any(m["type"] == "metrics" for m in sent) and counters.done == []
    assert states(sent) == ["thinking", "listening", "thinking", "listening"]


def test_a_cut_turn_is_counted_with_the_timings_it_reached_but_sends_no_metrics() -> None:
    report, sent, counters = reporter()
    report.on_event(TimingMark(1, "speech_end", at=10.0))
    report.on_event(UserTranscript(1, "tell me a story"))
    report.on_event(ReplyText(1, "Once upon a time,"))
    report.started(1, 10.7)
    report.drop(1, "barge-in")
    report.drop(1, "barge-in")  # a second cut of a turn already gone counts nothing
    report.on_event(UserTranscript(2, "and then?"))
    report.drop(2)  # cancelled, not cut: not counted
    assert counters.cut == [("barge-in", {"first_audio_sent_ms": 700.0})]
    assert not any(m["type"] == "metrics" for m in sent) and counters.done == []


def test_state_is_sent_on_change_or_when_forced() -> None:
    report, sent, _ = reporter()
    report.send_state()
    report.send_state()
    report.send_state(force=True)
    assert states(sent) == ["listening", "listening"]


def test_errors_say_what_failed_and_its_id_never_how() -> None:
    report, sent, counters = reporter()
    detail = "llm (openai_compatible): LLMServerError: cannot reach the LLM server at http://10.0.0.7:8000/v1"
    report.on_event(ErrorEvent(3, stage="llm", message=detail, error_id="1a2b3c4d"))
    report.on_event(ErrorEvent(NO_TURN, stage="asr", message="bad", error_id="00ff00ff"))
    report.on_event(ErrorEvent(4, stage="mystery", message="/home/me/secret.txt", error_id="12345678"))
    assert sent == [
        {"type": "error", "message": "the language model failed (error id 1a2b3c4d)", "turn": 3},
        {"type": "error", "message": "speech recognition failed (error id 00ff00ff)"},
        {"type": "error", "message": "a stage of the pipeline failed (error id 12345678)", "turn": 4},
    ]
    assert counters.errors == ["llm", "asr", "mystery"]


def test_typed_text_latency_counts_from_its_arrival() -> None:
    assert turn_timings({"text_received": 1.0, "first_audio_sent": 1.25}) == {"first_audio_sent_ms": 250.0}
    assert turn_timings({"speech_end": 1.0, "text_received": 0.0, "first_frame_sent": 1.1}) == {
        "first_frame_sent_ms": 100.0,
    }


def test_metrics_split_the_wait_at_the_decision_and_say_whether_the_reply_was_speculated() -> None:
    sent: list[dict[str, Any]] = []
    counters = Counters()
    outcomes = {1: (1, 2)}
    report = TurnReporter(sent.append, counters, lambda turn: outcomes.get(turn, (0, 0)))
    report.on_event(TimingMark(1, "speech_end", at=10.0))
    report.on_event(TimingMark(1, "asr_early_start", at=10.05))
    report.on_event(TimingMark(1, "asr_early_final", at=10.2))
    report.on_event(TimingMark(1, "llm_start", at=10.25))
    report.on_event(TimingMark(1, "vad_end", at=10.3))
    report.on_event(UserTranscript(1, "What time is it?"))
    report.on_event(ReplyEnd(1, "Noon."))
    report.started(1, 10.32)
    report.finished(1)
    metrics = next(m for m in sent if m["type"] == "metrics")
    assert metrics["vad_hangover_ms"] == 300.0
    # The pause heard, and the words' wait for the LLM (a prefill still running).
    assert (metrics["pause_to_asr_ms"], metrics["asr_early_ms"], metrics["asr_to_llm_ms"]) == (50.0, 150.0, 50.0)
    assert metrics["decision_to_first_audio_sent_ms"] == 20.0 and metrics["first_audio_sent_ms"] == 320.0
    assert (metrics["speculated"], metrics["speculations_dropped"]) == (1, 2)
    # The counts are not latencies: the server's histograms never see them.
    assert "speculated" not in counters.done[0] and counters.done[0]["decision_to_first_audio_sent_ms"] == 20.0
    # A typed turn (no speech) and a session that does not speculate say nothing of it.
    plain, plain_sent, _ = reporter()
    plain.on_event(TimingMark(2, "speech_end", at=1.0))
    plain.on_event(ReplyEnd(2, "Hi."))
    plain.started(2, 1.5)
    plain.finished(2)
    assert "speculated" not in next(m for m in plain_sent if m["type"] == "metrics")
