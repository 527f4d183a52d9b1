"""Conformance factory of the embedded ``asr: whisper``: its default options work; its core
is ``transcribe`` (one blocking call per utterance, run in the model lane)."""

from __future__ import annotations

from avatarchat.testing.conformance.factories import ConformanceFactory

FACTORIES: dict[str, ConformanceFactory] = {
    "asr:whisper": ConformanceFactory(core=lambda h: (h, "transcribe")),
}
