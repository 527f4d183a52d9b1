"""Server counters and latency histograms, rendered in the Prometheus text format (0.0.4).

Written by hand (no ``prometheus_client``): six metric families, all updated from the event
loop, so no locking is needed. ``GET /metrics`` serves ``render()``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

#: Upper bounds (ms) of the latency buckets; ``+Inf`` is added when rendering.
BUCKETS_MS: tuple[float, ...] = (50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000)
#: Distinct stage labels kept per family: a client cannot grow the output without bound.
MAX_LABELS = 32
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LABEL_OK = re.compile(r"[^A-Za-z0-9_.:-]")


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS_MS))
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        self.total += value
        self.n += 1
        for i, bound in enumerate(BUCKETS_MS):
            if value <= bound:
                self.counts[i] += 1  # per-bucket here; made cumulative when rendered
                break


class Metrics:
    """Counts sessions, turns and errors, and per-stage latency histograms.

    Every method is cheap and never raises, so callers may use it on any code path.
    """

    def __init__(self) -> None:
        self.sessions_active = 0
        self.sessions_total = 0
        self.turns_total = 0
        self.cuts: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.latency: dict[str, _Histogram] = {}

    def session_opened(self) -> None:
        self.sessions_active += 1
        self.sessions_total += 1

    def session_closed(self) -> None:
        self.sessions_active = max(0, self.sessions_active - 1)

    def turn_done(self, timings_ms: dict[str, float]) -> None:
        """Count a finished turn and observe each timing (``asr_ms`` goes to ``stage="asr"``)."""
        self.turns_total += 1
        self._observe(timings_ms)

    def turn_cut(self, reason: str, timings_ms: dict[str, float]) -> None:
        """Count a reply cut off (``barge-in``, ``interrupt``, ``text``, ``superseded``) and
        observe the timings it reached: a user who talks over the avatar waited too."""
        reason = _label(reason)
        if reason in self.cuts or len(self.cuts) < MAX_LABELS:
            self.cuts[reason] = self.cuts.get(reason, 0) + 1
        self._observe(timings_ms)

    def _observe(self, timings_ms: dict[str, float]) -> None:
        for key, value in timings_ms.items():
            try:
                ms = float(value)
            except (TypeError, ValueError):
                continue
            if not math.isfinite(ms):
                continue
            stage = _stage(key)
            hist = self.latency.get(stage)
            if hist is None:
                if len(self.latency) >= MAX_LABELS:
                    continue
                hist = self.latency[stage] = _Histogram()
            hist.observe(ms)

    def error(self, stage: str) -> None:
        """Count an error of ``stage`` (a pipeline stage, or ``signaling`` for the server)."""
        stage = _stage(stage)
        if stage in self.errors or len(self.errors) < MAX_LABELS:
            self.errors[stage] = self.errors.get(stage, 0) + 1

    def render(self) -> str:
        """The exposition text: HELP and TYPE lines, then samples; ends with a newline."""
        out = [
            *_family("avatarchat_sessions_active", "gauge", "Sessions open now."),
            f"avatarchat_sessions_active {self.sessions_active}",
            *_family("avatarchat_sessions_total", "counter", "Sessions opened since the server started."),
            f"avatarchat_sessions_total {self.sessions_total}",
            *_family("avatarchat_turns_total", "counter", "Conversation turns finished."),
            f"avatarchat_turns_total {self.turns_total}",
            *_family("avatarchat_turns_cut_total", "counter", "Replies cut off before their end, by reason."),
        ]
        out += [f'avatarchat_turns_cut_total{{reason="{r}"}} {n}' for r, n in sorted(self.cuts.items())]
        out += _family("avatarchat_errors_total", "counter", "Errors, by pipeline stage.")
        out += [f'avatarchat_errors_total{{stage="{s}"}} {n}' for s, n in sorted(self.errors.items())]
        out += _family("avatarchat_stage_latency_ms", "histogram", "Per-stage latency of a turn, milliseconds.")
        for stage, hist in sorted(self.latency.items()):
            out += _histogram_lines("avatarchat_stage_latency_ms", stage, hist)
        return "\n".join(out) + "\n"


def _histogram_lines(name: str, stage: str, hist: _Histogram) -> list[str]:
    lines, running = [], 0
    for bound, count in zip(BUCKETS_MS, hist.counts):
        running += count
        lines.append(f'{name}_bucket{{stage="{stage}",le="{_num(bound)}"}} {running}')
    lines.append(f'{name}_bucket{{stage="{stage}",le="+Inf"}} {hist.n}')
    lines.append(f'{name}_sum{{stage="{stage}"}} {_num(hist.total)}')
    lines.append(f'{name}_count{{stage="{stage}"}} {hist.n}')
    return lines


def _family(name: str, kind: str, help_: str) -> list[str]:
    return [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]


def _stage(key: str) -> str:
    key = str(key)
    return _label(key[:-3] if key.endswith("_ms") else key)


def _label(value: str) -> str:
    # Label values are safe characters only, so no escaping is ever needed when rendering.
    return _LABEL_OK.sub("_", str(value))[:64] or "unknown"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
