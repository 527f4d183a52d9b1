"""Run a blocking call with a deadline: a hang fails the test instead of stalling the suite."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Hung(AssertionError):
    pass


def call(fn: Callable[..., Any], *args: Any, timeout: float = 60.0) -> tuple[Any, BaseException | None]:
    """(result, None) or (None, the exception ``fn`` raised). A daemon thread: a call that
    hangs is reported (``Hung``) and cannot keep the test process alive."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001  (the caller judges every exception)
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True, name="fuzz-bounded")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise Hung(f"{getattr(fn, '__name__', fn)} still running after {timeout:.0f} s")
    return box.get("result"), box.get("error")
