"""Seeded bad audio files (for ``avatarchat talk --input``) and images (for ``avatarchat
avatar prepare``), as bytes: zero-length, wrong magic, truncated, absurd headers (sample
rates, channel counts, declared sizes, image dimensions), NaN samples, random bytes."""

from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np

FileCase = tuple[str, bytes]


def wav(data: bytes, *, rate: int = 16000, channels: int = 1, bits: int = 16, tag: int = 1,
        data_size: int | None = None, riff_size: int | None = None, fmt_size: int = 16,
        byte_rate: int | None = None, align: int | None = None) -> bytes:
    """A WAV with every header field settable (any lie in the header is the point)."""
    align = align if align is not None else channels * bits // 8
    byte_rate = byte_rate if byte_rate is not None else rate * align
    fmt = struct.pack("<HHIIHH", tag, channels, rate, byte_rate & 0xFFFFFFFF, align & 0xFFFF, bits)
    fmt += b"\0" * max(0, min(fmt_size, 64) - 16)  # the size field may lie beyond it
    body = b"WAVE" + b"fmt " + struct.pack("<I", fmt_size) + fmt[:fmt_size]
    body += b"data" + struct.pack("<I", len(data) if data_size is None else data_size) + data
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def _tone(n: int = 8000) -> np.ndarray:
    return (0.3 * np.sin(np.arange(n) * 0.07)).astype(np.float32)


def audio(rng: random.Random) -> list[FileCase]:
    pcm = (_tone() * 32767).astype("<i2").tobytes()
    good = wav(pcm)
    nan = np.full(4000, np.nan, np.float32)
    half_nan = _tone(4000)
    half_nan[::2] = np.nan
    inf = np.full(4000, np.inf, np.float32)
    out: list[FileCase] = [
        ("zero-length", b""), ("one byte", b"R"), ("RIFF only", b"RIFF"), ("text", b"hello, this is not audio\n"),
        ("wrong magic RIFX", b"RIFX" + good[4:]), ("wrong magic JUNK", b"JUNK" + good[4:]),
        ("WAVE missing", good[:8] + b"WAVX" + good[12:]), ("PNG bytes", b"\x89PNG\r\n\x1a\n" + good),
        ("all NaN float32", wav(nan.tobytes(), tag=3, bits=32)),
        ("half NaN float32", wav(half_nan.tobytes(), tag=3, bits=32)),
        ("infinite float32", wav(inf.tobytes(), tag=3, bits=32)),
        ("all NaN float64", wav(np.full(4000, np.nan).tobytes(), tag=3, bits=64)),
        ("float32 of 1e30", wav(np.full(4000, 1e30, np.float32).tobytes(), tag=3, bits=32)),
        ("rate 0", wav(pcm, rate=0)), ("rate 1", wav(pcm, rate=1)), ("rate 4294967295", wav(pcm, rate=0xFFFFFFFF)),
        ("rate 2147483648", wav(pcm, rate=2**31)), ("rate 7", wav(pcm, rate=7)),
        ("channels 0", wav(pcm, channels=0)), ("channels 65535", wav(pcm, channels=65535)),
        ("channels 255", wav(pcm, channels=255)), ("channels 3, odd data", wav(pcm[:-2], channels=3)),
        ("bits 0", wav(pcm, bits=0)), ("bits 7", wav(pcm, bits=7)), ("bits 65535", wav(pcm, bits=65535)),
        ("align 0", wav(pcm, align=0)), ("byte rate 0", wav(pcm, byte_rate=0)),
        ("format tag 0", wav(pcm, tag=0)), ("format tag 0xFFFE, no extension", wav(pcm, tag=0xFFFE)),
        ("format tag 0x1234", wav(pcm, tag=0x1234)), ("format tag mu-law, bits 16", wav(pcm, tag=7)),
        ("data declares 4 GB", wav(pcm, data_size=0xFFFFFFFF)), ("data declares 0", wav(pcm, data_size=0)),
        ("RIFF declares 4 GB", wav(pcm, riff_size=0xFFFFFFFF)), ("RIFF declares 0", wav(pcm, riff_size=0)),
        ("fmt declares 4 GB", wav(pcm, fmt_size=0xFFFFFF00)), ("fmt of 2 bytes", wav(pcm, fmt_size=2)),
        ("no data chunk", good[:36]), ("no fmt chunk", good[:12] + good[36:]),
        ("header only, no samples", wav(b"")), ("one sample", wav(pcm[:2])), ("half a sample", wav(pcm[:1])),
        ("121 s at 8 kHz, 8-bit", wav(b"\x80" * (8000 * 121), rate=8000, bits=8)),
        ("fLaC garbage", b"fLaC" + rng.randbytes(200)), ("OggS garbage", b"OggS" + rng.randbytes(200)),
        ("ID3 garbage", b"ID3\x04\x00\x00\x00\x00\x00\x00" + rng.randbytes(300)),
        ("MP3 frame sync garbage", b"\xff\xfb\x90\x00" + rng.randbytes(400)),
        ("MP4 ftyp garbage", b"\x00\x00\x00\x18ftypisom" + rng.randbytes(300)),
        ("WebM garbage", b"\x1a\x45\xdf\xa3" + rng.randbytes(300)),
        ("FORM/AIFF garbage", b"FORM\x00\x00\x01\x00AIFF" + rng.randbytes(200)),
        ("video-like MP4 header only", b"\x00\x00\x00\x20ftypmp42\x00\x00\x00\x00mp42isom" + b"\x00" * 8),
    ]
    for frac in (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.9):
        out.append((f"WAV truncated at {frac:.0%}", good[: int(len(good) * frac)]))
    for n in (4, 44, 100, 1000, 20000):
        out.append((f"{n} random bytes", rng.randbytes(n)))
    for i in range(8):
        buf = bytearray(good)
        for _ in range(20):
            buf[rng.randrange(44)] = rng.randrange(256)  # the header only: the samples are any bytes
        out.append((f"WAV header flipped #{i}", bytes(buf)))
    return out


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, pixels: bytes | None = None, *, depth: int = 8, colour: int = 2,
        bad_crc: bool = False) -> bytes:
    """A PNG whose IHDR says ``width`` x ``height`` whatever ``pixels`` holds."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    if bad_crc:
        ihdr = ihdr[:-4] + b"\0\0\0\0"
    raw = pixels if pixels is not None else b"".join(b"\0" + b"\x80" * (3 * width) for _ in range(height))
    return b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def _pillow(size: tuple[int, int], fmt: str, mode: str = "RGB", seed: int = 0) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], len(mode)), np.uint8)
    image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels)
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def _jpeg_sof(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its frame header claiming ``width`` x ``height``."""
    at = jpeg.index(b"\xff\xc0") + 5
    return jpeg[:at] + struct.pack(">HH", height, width) + jpeg[at + 4:]


def images(rng: random.Random) -> list[FileCase]:
    small_png = png(4, 4)
    jpeg = _pillow((64, 64), "JPEG")
    out: list[FileCase] = [
        ("zero-length", b""), ("one byte", b"\x89"), ("text", b"a portrait, honestly\n"),
        ("WAV bytes", wav(b"\0\0" * 100)), ("PDF header", b"%PDF-1.4\n" + rng.randbytes(200)),
        ("SVG", b"<svg xmlns='http://www.w3.org/2000/svg' width='99999' height='99999'/>"),
        ("PNG magic only", b"\x89PNG\r\n\x1a\n"), ("PNG, wrong magic", b"\x89PNX\r\n\x1a\n" + small_png[8:]),
        ("JPEG SOI only", b"\xff\xd8"), ("JPEG SOI and EOI", b"\xff\xd8\xff\xd9"),
        ("PNG 100000x100000 (bomb)", png(100_000, 100_000, b"\0")),
        ("PNG 8000x8000 (64 MP)", png(8000, 8000, b"\0")),
        ("PNG 2147483647x1", png(2**31 - 1, 1, b"\0")), ("PNG 0x0", png(0, 0, b"")),
        ("PNG 0x10", png(0, 10, b"")), ("PNG bad IHDR CRC", png(4, 4, bad_crc=True)),
        ("PNG depth 3", png(4, 4, depth=3)), ("PNG colour type 5", png(4, 4, colour=5)),
        ("PNG IDAT garbage", small_png[:33] + _chunk(b"IDAT", rng.randbytes(60)) + _chunk(b"IEND", b"")),
        ("PNG IDAT too short", png(64, 64, b"\0" * 10)),
        ("PNG 1x1", png(1, 1)), ("PNG 1x1 grey", _pillow((1, 1), "PNG", "L")),
        ("JPEG 1x1", _pillow((1, 1), "JPEG")), ("JPEG claims 65500x65500", _jpeg_sof(jpeg, 65500, 65500)),
        ("JPEG claims 0x0", _jpeg_sof(jpeg, 0, 0)), ("JPEG claims 10000x8000", _jpeg_sof(jpeg, 10000, 8000)),
        ("GIF claims 65535x65535", b"GIF89a\xff\xff\xff\xff\x00\x00\x00" + rng.randbytes(50)),
        ("GIF header only", b"GIF89a"), ("BMP claims 50000x50000", b"BM" + struct.pack("<IHHI", 0, 0, 0, 54)
                                         + struct.pack("<IiiHHIIiiII", 40, 50000, 50000, 1, 24, 0, 0, 0, 0, 0, 0)),
        ("TIFF garbage", b"II*\x00" + rng.randbytes(200)), ("WebP garbage", b"RIFF\x00\x01\x00\x00WEBPVP8 " + rng.randbytes(100)),
        ("ICO garbage", b"\x00\x00\x01\x00" + rng.randbytes(100)),
        ("64x64 noise PNG, no face", _pillow((64, 64), "PNG")), ("300x300 noise JPEG, no face", _pillow((300, 300), "JPEG")),
    ]
    for frac in (0.1, 0.3, 0.5, 0.8, 0.95, 0.99):
        out.append((f"JPEG truncated at {frac:.0%}", jpeg[: int(len(jpeg) * frac)]))
    big_png = _pillow((64, 64), "PNG", seed=1)
    for frac in (0.05, 0.2, 0.5, 0.8, 0.97):
        out.append((f"PNG truncated at {frac:.0%}", big_png[: int(len(big_png) * frac)]))
    for n in (1, 16, 300, 5000):
        out.append((f"{n} random bytes", rng.randbytes(n)))
    for i in range(6):
        buf = bytearray(jpeg)
        for _ in range(30):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        out.append((f"JPEG flipped #{i}", bytes(buf)))
    return out
