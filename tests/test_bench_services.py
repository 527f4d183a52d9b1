"""``bench services``: a service handler is timed against its local server with the network
delay really applied, beside the embedded handler of its stage, in one report."""

from __future__ import annotations

import pytest

from avatarchat.bench.services import bench_services


@pytest.mark.slow
async def test_times_the_service_and_the_embedded_handler_with_the_delay() -> None:
    notes: list[str] = []
    report = await bench_services(rounds=2, delay_ms=80.0, only=["qwen-compatible"], progress=notes.append)
    results = report["results"]
    assert set(results) == {"qwen-compatible", "embedded-local"}
    service = results["qwen-compatible"]
    assert service["stage"] == "llm" and service["measure"] == "first_token" and service["ms"]["n"] == 2
    # 80 ms there and 80 ms back at least: the delay is applied to what the handler waits for.
    assert service["ms"]["min"] >= 160
    assert results["embedded-local"]["ms"]["n"] == 2
    assert report["delay_ms_each_way"] == 80.0 and "loadavg" in report["machine"]


async def test_an_unknown_case_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no service cases to measure named nope"):
        await bench_services(rounds=1, delay_ms=0.0, only=["nope"], progress=lambda _: None)
