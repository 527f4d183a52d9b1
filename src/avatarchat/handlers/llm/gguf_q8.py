"""SmolLM2's GGUF re-encoded from Q4_1 to Q8_0, once per venv, for llama.cpp's faster CPU path.

The package ships SmolLM2-135M-Instruct in Q4_1. llama.cpp has no fast CPU kernels for
Q4_1, so on one thread it reads a prompt at 5.5 ms a token and writes 95 tokens a second;
the same weights in Q8_0 read at 3.6 ms and write 110 (idle 2-core machine, docs/
PERFORMANCE.md). Every Q4_1 value is ``d * q + m`` with ``q`` in 0..15; Q8_0 keeps it to
within 1/254 of its block's largest value, a twentieth of Q4_1's own step. Greedy replies
open alike (10 of 10 questions share their first two words); later words may part, as
llama.cpp also rounds the activations differently for Q8_0. ``bench quality``: 11 of 20
answers right against 8.
The file made here is byte for byte the one llama.cpp's own Python package (``gguf``)
writes when asked to quantize the dequantized Q4_1 tensors to Q8_0.

Only the tensor data changes: the header's key/value section is copied byte for byte and
the tensor table is rewritten with the new types and offsets. The result is deterministic,
so its sha256 is pinned like any shipped file's and checked at load. It is written under a
temporary name (``audio.io.atomic_write``) and renamed into place only once its sha256 is
right: a crash never leaves a half-written model.
"""

from __future__ import annotations

import hashlib
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from avatarchat.audio.io import atomic_write
from avatarchat.engine.handler import HandlerLoadError
from avatarchat.models import ModelFile, verify

log = logging.getLogger(__name__)

_MAGIC = b"GGUF"
_Q4_1, _Q8_0 = 3, 8
_BLOCK = 32  # values per block, both types
_Q4_1_BYTES, _Q8_0_BYTES = 20, 34  # f16 d, f16 m, 16 nibble bytes | f16 d, 32 int8
_ALIGNMENT_KEY = "general.alignment"
# Fixed-size GGUF value types (the type id -> bytes); 8 is a string, 9 an array.
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4


class GGUFError(HandlerLoadError):
    """The file is not a GGUF this module can re-encode; the message says why."""


@dataclass
class _Tensor:
    name: bytes
    dims: list[int]
    kind: int
    offset: int  # from the start of the data section

    def count(self) -> int:
        return math.prod(self.dims)


def _read(f: BinaryIO, fmt: str) -> tuple[int, ...]:
    size = struct.calcsize(fmt)
    raw = f.read(size)
    if len(raw) != size:
        raise GGUFError("the GGUF file ends inside its header")
    return struct.unpack(fmt, raw)


def _string(f: BinaryIO) -> bytes:
    (n,) = _read(f, "<Q")
    if n > 1 << 20:
        raise GGUFError(f"a GGUF string of {n} bytes: not a GGUF header")
    return f.read(n)


def _skip_value(f: BinaryIO, kind: int) -> None:
    if kind == _STRING:
        _string(f)
    elif kind == _ARRAY:
        item, n = _read(f, "<IQ")
        if item in _SIZES:
            f.seek(_SIZES[item] * n, 1)
        else:
            for _ in range(n):
                _skip_value(f, item)
    elif kind in _SIZES:
        f.seek(_SIZES[kind], 1)
    else:
        raise GGUFError(f"unknown GGUF value type {kind}")


@dataclass
class _Header:
    kv_count: int
    kv: bytes  # the key/value section, raw
    tensors: list[_Tensor]
    alignment: int
    data_start: int


def _header(f: BinaryIO) -> _Header:
    magic, version, n_tensors, n_kv = _read(f, "<4sIQQ")
    if magic != _MAGIC or version not in (2, 3):
        raise GGUFError(f"not a GGUF v2/v3 file (magic {magic!r}, version {version})")
    start = f.tell()
    alignment = 32
    for _ in range(n_kv):
        key = _string(f)
        (kind,) = _read(f, "<I")
        if key == _ALIGNMENT_KEY.encode() and kind == _UINT32:
            (alignment,) = _read(f, "<I")
        else:
            _skip_value(f, kind)
    end = f.tell()
    f.seek(start)
    kv = f.read(end - start)
    tensors = []
    for _ in range(n_tensors):
        name = _string(f)
        (n_dims,) = _read(f, "<I")
        dims = list(_read(f, f"<{n_dims}Q"))
        kind, offset = _read(f, "<IQ")
        tensors.append(_Tensor(name, dims, kind, offset))
    return _Header(n_kv, kv, tensors, alignment, _align(f.tell(), alignment))


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def _spans(tensors: list[_Tensor], data_size: int) -> list[int]:
    """Bytes from each tensor's offset to the next one's (or the file's end): its data and
    the alignment padding after it."""
    ends = sorted({t.offset for t in tensors} | {data_size})
    return [ends[ends.index(t.offset) + 1] - t.offset for t in tensors]


def q4_1_to_q8_0(raw: bytes) -> bytes:
    """Q4_1 blocks re-encoded as Q8_0 blocks: the values ``d * q + m`` rounded to the
    nearest step of ``max|x| / 127`` (half away from zero, as llama.cpp rounds)."""
    blocks = np.frombuffer(raw, np.uint8).reshape(-1, _Q4_1_BYTES)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    qs = blocks[:, 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)  # low nibbles: values 0-15
    x = d * q + m
    scale = np.abs(x).max(axis=1, keepdims=True) / 127.0
    inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale > 0)
    v = x * inverse
    ints = (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int8)
    out = np.empty((len(blocks), _Q8_0_BYTES), np.uint8)
    out[:, 0:2] = scale.astype(np.float16).view(np.uint8)
    out[:, 2:] = ints.view(np.uint8)
    return out.tobytes()


def reencode(source: Path, out: BinaryIO) -> str:
    """Write ``source`` with its Q4_1 tensors as Q8_0 to ``out``; returns the sha256 of what
    it wrote. Raises ``GGUFError`` for a file it cannot read."""
    digest = hashlib.sha256()
    written = 0

    def put(data: bytes) -> None:
        nonlocal written
        out.write(data)
        digest.update(data)
        written += len(data)

    with open(source, "rb") as f:
        head = _header(f)
        if any(t.count() % _BLOCK for t in head.tensors if t.kind == _Q4_1):
            raise GGUFError(f"{source}: a Q4_1 tensor's size is not a multiple of {_BLOCK}")
        spans = _spans(head.tensors, source.stat().st_size - head.data_start)
        out_tensors, offset = [], 0
        for t, span in zip(head.tensors, spans, strict=True):
            kind, size = (_Q8_0, t.count() // _BLOCK * _Q8_0_BYTES) if t.kind == _Q4_1 else (t.kind, span)
            out_tensors.append(_Tensor(t.name, t.dims, kind, offset))
            offset = _align(offset + size, head.alignment)
        put(struct.pack("<4sIQQ", _MAGIC, 3, len(head.tensors), head.kv_count))
        put(head.kv)
        for t in out_tensors:
            put(struct.pack("<Q", len(t.name)) + t.name)
            put(struct.pack(f"<I{len(t.dims)}Q", len(t.dims), *t.dims))
            put(struct.pack("<IQ", t.kind, t.offset))
        put(b"\0" * (_align(written, head.alignment) - written))
        base = written
        for t, span, new in zip(head.tensors, spans, out_tensors, strict=True):
            f.seek(head.data_start + t.offset)
            raw = f.read(span)
            if len(raw) != span:
                raise GGUFError(f"{source}: tensor {t.name.decode(errors='replace')} is cut short")
            put(b"\0" * (base + new.offset - written))
            put(q4_1_to_q8_0(raw[: t.count() // _BLOCK * _Q4_1_BYTES]) if t.kind == _Q4_1 else raw)
    return digest.hexdigest()


def q8_0_file(source: ModelFile, folder: Path, filename: str, sha256: str) -> Path:
    """The Q8_0 copy of ``source`` in ``folder``, made on first use and verified.

    ``source`` is verified first; a damaged copy is made again. The copy is checked against
    ``sha256`` as it is written and renamed into place only if it matches. Where ``folder``
    cannot be written (a read-only install, a full disk), the shipped file itself, with a
    warning: slower, not broken."""
    target = folder / filename
    name = f"{filename} (Q8_0 of {source.distribution})"
    if target.exists():
        try:
            verify(target, sha256, name, f"delete {target} to have it made again")
            return target
        except HandlerLoadError:
            log.warning("%s does not match its sha256; making it again", target)
    origin = source.locate()
    log.info("llm local: re-encoding %s as Q8_0 for llama.cpp's faster CPU path (once)", origin.name)

    def write(out: BinaryIO) -> None:
        made = reencode(origin, out)
        if made != sha256:
            raise HandlerLoadError(f"{name}: the re-encoding has sha256 {made[:16]}…, expected "
                                   f"{sha256[:16]}…; set llm.q8_0: false")

    try:
        atomic_write(target, write)
    except OSError as exc:
        log.warning("llm local: cannot write the Q8_0 model to %s (%s); running the shipped %s, "
                    "which llama.cpp reads ~35 %% slower", folder, exc, origin.name)
        return origin
    return target
