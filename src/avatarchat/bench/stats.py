"""Small helpers shared by the benchmarks: robust summaries and what the machine was doing."""

from __future__ import annotations

import os
import platform
import resource
from collections.abc import Iterable
from typing import Any

import numpy as np


def summarize(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """Median, p90, min and max of the values that exist (benchmarks report medians and p90)."""
    v = np.array([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return {"n": 0, "median": None, "p90": None, "min": None, "max": None}
    return {
        "n": int(len(v)),
        "median": _round(float(np.median(v))),
        "p90": _round(float(np.percentile(v, 90))),
        "min": _round(float(v.min())),
        "max": _round(float(v.max())),
    }


def _round(x: float) -> float:
    # Milliseconds keep one decimal; ratios such as a real-time factor keep their digits.
    return round(x, 1) if abs(x) >= 10 else round(x, 4)


def summarize_rows(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Summaries of every numeric key found in ``rows``."""
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)})
    return {k: summarize(r.get(k) for r in rows) for k in keys}


def machine() -> dict[str, Any]:
    """The facts a reader needs to trust a figure: cores, load, Python."""
    load1, load5, load15 = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "loadavg": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def max_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports kilobytes)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
