"""The fuzz corpus is big enough: 1,000+ bad inputs over the categories the issue names.
Each category's test (test_fuzz_*.py) sends every input its generator makes; this counts
them from the same seeded generators."""

from __future__ import annotations

import random

from tests.fuzz import gen_channel, gen_config, gen_files, gen_http

MINIMUM = 1000


def corpus_sizes() -> dict[str, int]:
    sizes = {f"http {group}": len(cases) for group, cases in gen_http.all_cases().items()}
    sizes["data channel"] = len(gen_channel.messages(random.Random("channel")))
    sizes["audio files"] = len(gen_files.audio(random.Random("audio")))
    sizes["images"] = len(gen_files.images(random.Random("images")))
    sizes["configs"] = len(gen_config.all_cases())
    return sizes


def test_the_corpus_holds_a_thousand_bad_inputs() -> None:
    sizes = corpus_sizes()
    # SDP mutations need a live offer (test_fuzz_sdp.py makes one): not counted here.
    print("\n" + "\n".join(f"{name}: {n}" for name, n in sizes.items()) + f"\ntotal (without SDP): {sum(sizes.values())}")
    assert sum(sizes.values()) >= MINIMUM
    assert all(n >= 50 for n in sizes.values()), sizes
