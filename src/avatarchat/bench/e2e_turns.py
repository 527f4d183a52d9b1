"""What ``avatarchat bench e2e`` makes of one run's recordings (pure: no browser, no server).

Input: the page's voiced segments of its outgoing microphone and incoming avatar voice and
their envelopes (``window.avatarchat``, page clock, ms), the data-channel messages, and
getStats figures. Output: one row per question, with its split:

- end of speech -> decision: the server's ``vad_hangover_ms`` (speech end to the turn
  being decided);
- decision -> first audio sent: the server's ``decision_to_first_audio_sent_ms``, or where
  a server does not send it, ``first_audio_sent_ms - vad_hangover_ms`` (both count from
  the speech's end);
- sent -> heard: the page's voice to voice less the server's ``first_audio_sent_ms``. The
  page times from the end of the speech leaving the page, the server from its end arriving
  there, so this part also holds the microphone's trip to the server (Opus framing, the
  network, the server's receive buffer), not only the reply's trip back and the jitter buffer.

and, for questions with a pause in the middle, whether a reply started during the pause.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

#: RMS above this (about -40 dBFS) counts as audible in the page's envelopes.
AUDIBLE_RMS = 0.01
#: A quiet stretch inside a question at least this long is its pause (gaps between words
#: are shorter; the pauses put in are 0.4-0.8 s).
MIN_PAUSE_MS = 300.0

#: The server's per-turn timings (the "metrics" message) reported beside the page's own.
SERVER_METRICS = ("first_audio_after_speech_end_ms", "first_audio_sent_ms", "first_frame_sent_ms",
                  "vad_hangover_ms", "decision_to_first_audio_sent_ms", "pause_to_asr_ms", "asr_early_ms",
                  "asr_to_llm_ms", "asr_ms",
                  "llm_first_token_ms", "tts_first_audio_ms", "avatar_first_frame_ms")

Segment = dict[str, float]
Envelope = dict[str, list[float]]


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def split(metrics: dict[str, Any], voice_to_voice_ms: float | None) -> dict[str, float | None]:
    """A turn's voice to voice in its three parts (see the module docstring); None where a
    figure is missing."""
    hangover = _num(metrics.get("vad_hangover_ms"))
    sent = _num(metrics.get("first_audio_sent_ms"))
    decided = _num(metrics.get("decision_to_first_audio_sent_ms"))
    if decided is None and sent is not None and hangover is not None:
        decided = sent - hangover
    heard = voice_to_voice_ms - sent if voice_to_voice_ms is not None and sent is not None else None
    r = lambda x: None if x is None else round(x, 1)  # noqa: E731
    return {"end_to_decision_ms": r(hangover), "decision_to_sent_ms": r(decided), "sent_to_heard_ms": r(heard)}


def pause_within(seg: Segment, mic: Envelope, min_ms: float = MIN_PAUSE_MS) -> tuple[float, float] | None:
    """The longest quiet stretch (RMS below ``AUDIBLE_RMS``) of at least ``min_ms`` inside a
    voiced segment of the microphone envelope, as (start, end) in page ms; None if none."""
    t, rms = np.asarray(mic["t"], float), np.asarray(mic["rms"], float)
    inside = (t >= seg["start"]) & (t <= seg["end"])
    best: tuple[float, float] | None = None
    run_start = None
    for ti, quiet in zip(t[inside], rms[inside] < AUDIBLE_RMS):
        if quiet and run_start is None:
            run_start = ti
        elif not quiet and run_start is not None:
            if ti - run_start >= min_ms and (best is None or ti - run_start > best[1] - best[0]):
                best = (float(run_start), float(ti))
            run_start = None
    return best


def turn_rows(mic: list[Segment], remote: list[Segment], messages: list[dict[str, Any]],
              questions: Sequence[str], mic_envelope: Envelope | None = None) -> list[dict[str, Any]]:
    """One row per question heard in the mic envelope.

    Voice-to-voice: from the end of the question in the outgoing envelope to the start of the
    first incoming voiced stretch after it. A reply still playing when the question ended
    (the gap was too short, or it started during a pause) would be counted wrongly, so such
    a turn is flagged and left out. The server's messages are matched by the turn number of
    the question's last final transcript (a question cut in two by its pause has two).
    With ``mic_envelope``, a question's pause (``pause_within``) is looked for, and a reply
    whose first audible sample comes in it counts as an answer during a pause.
    """
    ins = [m for m in messages if m["dir"] == "in"]
    rows = []
    for i, seg in enumerate(mic):
        end = seg["end"]
        nxt = mic[i + 1]["start"] if i + 1 < len(mic) else float("inf")
        overlapped = any(r["start"] < end < r["end"] for r in remote)
        onset = next((r for r in remote if end < r["start"] < nxt), None)
        finals = [m["msg"] for m in ins if seg["start"] <= m["t"] < nxt
                  and m["msg"].get("type") == "transcript" and m["msg"].get("final")]
        last = finals[-1] if finals else {}
        # The last final's turn, and any other that had the same words (a repeated final):
        # the reply and its metrics may come under either.
        turns = {f.get("turn") for f in finals if _words(f) == _words(last)} - {None}
        of_turn = [m["msg"] for m in ins if m["msg"].get("turn") in turns]
        reply = next((m.get("text") for m in of_turn if m.get("type") == "reply" and m.get("final")), None)
        metrics: dict[str, Any] = next((m for m in of_turn if m.get("type") == "metrics"), {})
        speaking = next((m["t"] for m in ins if end < m["t"] < nxt
                         and m["msg"].get("type") == "state" and m["msg"].get("state") == "speaking"), None)
        # The reply's audible length: its stretches up to the next question.
        played = [r for r in remote if onset is not None and onset["start"] <= r["start"] < nxt]
        v2v = round(onset["start"] - end, 1) if onset is not None and not overlapped else None
        parts = split(metrics, v2v)
        # Cut in two by its pause: the first reply heard after the end may be the one to the
        # first half, so the last turn's server figures do not tell where its time went.
        halves = {f.get("turn") for f in finals[:-1]
                  if f.get("turn") != last.get("turn") and _words(f) != _words(last)}
        if halves:
            parts["sent_to_heard_ms"] = None
        row: dict[str, Any] = {
            "question": questions[i] if i < len(questions) else None,
            "heard": " / ".join(str(f.get("text")) for f in finals) if finals else None,
            "final_transcripts": len(finals),
            # The same words twice (a server that sent one final transcript again).
            "repeated_final": len({_words(f) for f in finals}) < len(finals),
            "cut_at_pause": bool(halves),
            "reply": reply,
            "speech_s": round((seg["end"] - seg["start"]) / 1000, 2),
            "overlapped_reply": overlapped,
            # A question cut in two at its pause: its figure goes apart (the reply heard first
            # may answer half of it), out of the voice-to-voice summary.
            "voice_to_voice_ms": None if halves else v2v,
            "voice_to_voice_cut_ms": v2v if halves else None,
            **parts,
            # The server took a pause inside the question for its end, and began to answer the
            # words before it (its reply may have been cut when the user went on).
            "half_answered": any(m["msg"].get("type") == "reply" and m["msg"].get("turn") in halves for m in ins),
            "reply_audio_s": round((played[-1]["end"] - played[0]["start"]) / 1000, 2) if played else None,
            "speaking_state_after_speech_end_ms":
                round(speaking - end, 1) if speaking is not None and not overlapped else None,
            **{f"server_{k}": metrics.get(k) for k in SERVER_METRICS},
            "server_speculated": metrics.get("speculated"),
            # The reply's first audio ready (reached the playout) -> handed to the encoder: the
            # playout's start margin and the wait for the next 20 ms frame.
            "server_ready_to_sent_ms": _diff(metrics, "first_audio_sent_ms", "first_audio_after_speech_end_ms"),
            # The reply's first frame against its first audio, as the server sent them: frames
            # are placed on the audio schedule, so this is the encoder's lag (tests do not bound it).
            "server_av_start_skew_ms": _skew(metrics),
        }
        if mic_envelope is not None:
            row.update(_pause_figures(seg, mic_envelope, remote))
        rows.append(row)
    return rows


def _pause_figures(seg: Segment, mic: Envelope, remote: list[Segment]) -> dict[str, Any]:
    """Where the question's pause was, and whether a reply started in it (or later, but
    before the question's true end)."""
    pause = pause_within(seg, mic)
    if pause is None:
        return {"pause_ms": None, "answered_during_pause": None, "reply_before_end": None}
    during = any(pause[0] <= r["start"] < pause[1] for r in remote)
    before_end = any(pause[0] <= r["start"] < seg["end"] for r in remote)
    return {"pause_ms": round(pause[1] - pause[0], 1), "answered_during_pause": during,
            "reply_before_end": before_end}


def _words(transcript: dict[str, Any]) -> str:
    """A transcript's words, without case or punctuation."""
    return " ".join(re.sub(r"[^\w\s']", " ", str(transcript.get("text") or "")).lower().split())


def _skew(metrics: dict[str, Any]) -> float | None:
    return _diff(metrics, "first_frame_sent_ms", "first_audio_sent_ms")


def _diff(metrics: dict[str, Any], later: str, earlier: str) -> float | None:
    a, b = _num(metrics.get(later)), _num(metrics.get(earlier))
    return round(a - b, 1) if a is not None and b is not None else None


def speculations(messages: list[dict[str, Any]]) -> dict[str, int | None]:
    """Speculative replies used and dropped over a run, from the server's ``metrics``
    messages (``speculated`` 0/1 and ``speculations_dropped`` per turn): None where no
    message carries the figure (a server without speculation)."""
    metrics = [m["msg"] for m in messages if m["dir"] == "in" and m["msg"].get("type") == "metrics"]
    out: dict[str, int | None] = {}
    for key, name in (("speculated", "speculations_used"), ("speculations_dropped", "speculations_dropped")):
        values = [_num(m.get(key)) for m in metrics if _num(m.get(key)) is not None]
        out[name] = int(sum(values)) if values else None  # type: ignore[arg-type]
    return out


def pause_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Over a run's rows: questions whose pause was found, replies that started during it,
    replies that started after the pause began but before the question ended, questions the
    server took for two turns (an end decided at the pause), and those whose first half it
    began to answer (heard or not)."""
    found = [r for r in rows if r.get("pause_ms") is not None]
    return {"paused_questions": len(found),
            "answers_during_pause": sum(1 for r in found if r["answered_during_pause"]),
            "replies_before_end": sum(1 for r in found if r["reply_before_end"]),
            "questions_cut_at_pause": sum(1 for r in found if r["cut_at_pause"]),
            "half_answered": sum(1 for r in found if r["half_answered"])}


#: getStats counters of the incoming voice whose change over the measured span is reported.
CONCEALMENT_COUNTERS = ("totalSamplesReceived", "concealedSamples", "silentConcealedSamples", "concealmentEvents",
                        "insertedSamplesForDeceleration", "removedSamplesForAcceleration")


def concealment(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """The incoming voice's concealment over the measured span, from two getStats readings
    of its inbound-rtp: counter changes, ``concealed_share`` (concealed / received samples),
    ``audible_concealed_share`` (less the samples concealed while the sender was silent),
    and the jitter buffer's mean delay, target and minimum over the span (ms)."""
    if not after:
        return {}
    before = before or {}
    out: dict[str, Any] = {}
    for k in CONCEALMENT_COUNTERS:
        a, b = _num(after.get(k)), _num(before.get(k)) or 0.0
        out[k] = None if a is None else int(a - b)
    total = out.get("totalSamplesReceived")
    if total:
        concealed, silent = out.get("concealedSamples"), out.get("silentConcealedSamples")
        out["concealed_share"] = None if concealed is None else round(concealed / total, 5)
        out["audible_concealed_share"] = (None if concealed is None or silent is None
                                          else round((concealed - silent) / total, 5))
    emitted = (_num(after.get("jitterBufferEmittedCount")) or 0.0) - (_num(before.get("jitterBufferEmittedCount")) or 0.0)
    for key, name in (("jitterBufferDelay", "jitter_buffer_ms"), ("jitterBufferTargetDelay", "jitter_buffer_target_ms"),
                      ("jitterBufferMinimumDelay", "jitter_buffer_minimum_ms")):
        a = _num(after.get(key))
        out[name] = (round(1000.0 * (a - (_num(before.get(key)) or 0.0)) / emitted, 1)
                     if a is not None and emitted > 0 else None)
    out["jitter_buffer_target_asked"] = after.get("jitterBufferTarget")
    return out


# --- barge-in ----------------------------------------------------------------------------


def barge_in_stops(mic: list[Segment], remote: Envelope, heard: Envelope | None = None,
                   quiet_s: float = 1.0) -> list[float]:
    """For each question that starts while the avatar is audible (a barge-in), the time from
    its onset in the outgoing mic envelope to the avatar falling silent.

    A barge-in is told from the incoming ``remote`` envelope (the avatar was audible in the
    300 ms before the onset). Silence is looked for in ``heard`` when given (the incoming
    voice times the page's playback volume: what the user hears, page-side mute included),
    else in ``remote`` itself (the server stopping the reply, as it arrives in the page).

    "Silent" is the start of the first stretch below ``AUDIBLE_RMS`` lasting ``quiet_s``: the
    reply's own pauses between clauses are shorter, while a cut reply stays silent until the
    next answer, which takes longer than that.
    """
    t, rms = np.asarray(remote["t"]), np.asarray(remote["rms"])
    listen = heard if heard is not None else remote
    lt, lrms = np.asarray(listen["t"]), np.asarray(listen["rms"])
    stops = []
    for seg in mic:
        onset = seg["start"]
        before = rms[(t >= onset - 300) & (t < onset)]
        if len(before) == 0 or before.max() < AUDIBLE_RMS:
            continue  # nothing was playing: an ordinary turn
        quiet_at = _first_quiet(lt[lt >= onset], lrms[lt >= onset] < AUDIBLE_RMS, quiet_s * 1000)
        if quiet_at is not None:
            stops.append(round(float(quiet_at - onset), 1))
    return stops


def _first_quiet(times: np.ndarray, quiet: np.ndarray, min_ms: float) -> float | None:
    """The start of the first run of ``quiet`` samples lasting ``min_ms``."""
    run_start = None
    for ti, q in zip(times, quiet):
        if not q:
            run_start = None
        elif run_start is None:
            run_start = ti
        elif ti - run_start >= min_ms:
            return float(run_start)
    return None


def page_detections(mic: list[Segment], remote: Envelope, gate: dict[str, Any]) -> list[float]:
    """For each barge-in (as in ``barge_in_stops``), the time from its onset in the mic
    envelope to the page's barge-in gate muting the avatar for it (web/bargein.js)."""
    t, rms = np.asarray(remote["t"]), np.asarray(remote["rms"])
    mutes = [e["t"] for e in gate.get("events", []) if e.get("what") == "mute" and e.get("reason") == "voice"]
    out = []
    for i, seg in enumerate(mic):
        before = rms[(t >= seg["start"] - 300) & (t < seg["start"])]
        if len(before) == 0 or before.max() < AUDIBLE_RMS:
            continue
        nxt = mic[i + 1]["start"] if i + 1 < len(mic) else float("inf")
        # The gate may fire a little before the envelope's segment starts (its own threshold).
        hit = next((m for m in mutes if seg["start"] - 100 <= m < min(nxt, seg["end"])), None)
        if hit is not None:
            out.append(round(float(hit - seg["start"]), 1))
    return out
