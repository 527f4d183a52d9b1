"""Progress lines on stderr, timed from process start: what every command prints while it works."""

from __future__ import annotations

import sys
import time

_T0 = time.perf_counter()


def say(message: str) -> None:
    """Print ``[  1.23s] message`` to stderr at once (stdout stays free for JSON output)."""
    print(f"[{time.perf_counter() - _T0:6.2f}s] {message}", file=sys.stderr, flush=True)
