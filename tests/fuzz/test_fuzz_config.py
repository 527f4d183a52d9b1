"""Bad configs (tests/fuzz/gen_config.py) through ``load_config`` and ``parse_config``:
every one is a ``ConfigError`` of one line naming the file (a byte-flipped default may
also still be valid), never another exception, and none takes long enough to hang."""

from __future__ import annotations

from pathlib import Path

from avatarchat.config import Config, ConfigError, load_config, parse_config
from tests.fuzz.bounded import call
from tests.fuzz.gen_config import ConfigCase, all_cases

CASES = all_cases()


def judge(case: ConfigCase, source: str, result: object, error: BaseException | None) -> str | None:
    if error is None:
        return None if case.may_pass and isinstance(result, Config) else "accepted"
    if not isinstance(error, ConfigError):
        return f"{type(error).__name__}: {str(error)[:160]!r}"
    message = str(error)
    if "\n" in message or not message.startswith(source):
        return f"not one line naming {source}: {message[:200]!r}"
    return None


def test_bad_configs_are_one_config_error_line(tmp_path: Path) -> None:
    failures: list[str] = []
    for i, case in enumerate(CASES):
        if case.text is None:
            source = f"fuzz-{i}.yaml"
            result, error = call(parse_config, case.doc, source, timeout=30)
        else:
            path = tmp_path / f"fuzz-{i}.yaml"
            if isinstance(case.text, bytes):
                path.write_bytes(case.text)
            else:
                path.write_text(case.text, encoding="utf-8")
            source = str(path)
            result, error = call(load_config, path, timeout=30)
        why = judge(case, source, result, error)
        if why:
            failures.append(f"{case.label}: {why}")
    passed = sum(1 for c in CASES if c.may_pass)
    print(f"\nconfigs: {len(CASES)} ({passed} byte-flipped defaults may pass)")
    assert not failures, f"{len(failures)} of {len(CASES)} configs:\n" + "\n".join(failures)
