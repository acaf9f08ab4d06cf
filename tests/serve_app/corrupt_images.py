"""Corrupt images, made in memory from real ones: truncated, bit-flipped, header-forged PNG/JPEG/WebP/GIF bytes
(a hypothesis strategy), and forged EXIF blocks that Pillow reads but fails on later. Shared by the preprocess unit
fuzz and the HTTP fuzz."""

from __future__ import annotations

import struct
import zlib

import numpy as np
from hypothesis import strategies as st
from PIL import Image, TiffTags

from tests.serve_app.image_samples import encode, gradient_rgb


def _animated_gif() -> bytes:
    frames = [gradient_rgb(24, 16, seed=s).convert("P") for s in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the EXIF block is parsed (and written again) when the image is turned upright
    exif[0x010F] = "maker"
    exif[0x8769] = {0x9003: "2020:01:01 00:00:00"}  # a sub-IFD
    return exif.tobytes()


# Formats accepted (PNG, JPEG, WebP, each also with an EXIF block) and one refused by name (GIF); small, so each
# example decodes in microseconds.
REAL = {
    "png": encode(gradient_rgb(24, 16, seed=1), "PNG"),
    "png-exif": encode(gradient_rgb(24, 16, seed=1), "PNG", exif=_exif()),
    "png-palette": encode(gradient_rgb(24, 16, seed=1).convert("P"), "PNG"),
    "png-16bit": encode(Image.fromarray(np.arange(24 * 16, dtype=np.uint16).reshape(16, 24) * 97), "PNG"),
    "jpeg": encode(gradient_rgb(24, 16, seed=2), "JPEG"),
    "jpeg-exif": encode(gradient_rgb(24, 16, seed=2), "JPEG", exif=_exif()),
    "jpeg-progressive": encode(gradient_rgb(24, 16, seed=2), "JPEG", progressive=True),
    "webp": encode(gradient_rgb(24, 16, seed=3), "WEBP"),
    "webp-exif": encode(gradient_rgb(24, 16, seed=3), "WEBP", exif=_exif()),
    "webp-lossless": encode(gradient_rgb(24, 16, seed=3), "WEBP", lossless=True),
    "gif": _animated_gif(),
}


KNOWN_TAGS = sorted(TiffTags.TAGS_V2)


def headers(raw: bytes) -> list[int]:
    """Where the headers start: the file's own, and the EXIF block's TIFF header when there is one."""
    return [0] + [at for at in (raw.find(b"II*\x00"), raw.find(b"MM\x00*")) if at > 0]


def exif_entries(raw: bytes) -> tuple[str, list[int]]:
    """(struct byte order, offsets of the EXIF block's first-IFD entries: 12 bytes each, tag, type, count, value)."""
    tiff = headers(raw)[1:]
    if not tiff:
        return "<", []
    endian = "<" if raw[tiff[0]:tiff[0] + 2] == b"II" else ">"
    ifd = tiff[0] + struct.unpack(endian + "I", raw[tiff[0] + 4:tiff[0] + 8])[0]
    count = struct.unpack(endian + "H", raw[ifd:ifd + 2])[0]
    return endian, [ifd + 2 + 12 * i for i in range(count)]


def fix_png_crcs(raw: bytearray) -> bytearray:
    """Recompute every PNG chunk's CRC, so a forged field reaches the decoder instead of failing the CRC check."""
    pos = 8
    while pos + 12 <= len(raw):
        length = struct.unpack(">I", raw[pos:pos + 4])[0]
        end = pos + 8 + length
        if end + 4 > len(raw):
            break
        raw[end:end + 4] = struct.pack(">I", zlib.crc32(bytes(raw[pos + 4:end])) & 0xFFFFFFFF)
        pos = end + 4
    return raw


def forged_exif(name: str, entry: int, tag: int, kind: int) -> bytes:
    """REAL[name] with its EXIF block's `entry`-th IFD entry made to say `tag` of TIFF type `kind`."""
    raw = bytearray(REAL[name])
    endian, entries = exif_entries(REAL[name])
    raw[entries[entry]:entries[entry] + 4] = struct.pack(endian + "HH", tag, kind)
    return bytes(fix_png_crcs(raw) if name.startswith("png") else raw)


# Forged EXIF entries that Pillow reads, then fails on when exif_transpose writes the block again (each escaped the
# preprocess stage as a 500 before every Pillow exception was mapped): struct.error, TypeError, AttributeError,
# KeyError, OverflowError.
FORGED_EXIF = {
    "struct.error": forged_exif("jpeg-exif", 0, 254, 1), "TypeError": forged_exif("jpeg-exif", 0, 282, 1),
    "AttributeError": forged_exif("webp-exif", 0, 269, 11), "KeyError": forged_exif("jpeg-exif", 0, 262, 3),
    "OverflowError": forged_exif("webp-exif", 2, 45573, 12), "struct.error-png": forged_exif("png-exif", 0, 254, 1),
}


@st.composite
def corrupt_images(draw) -> bytes:
    """A real image with one or two of: cut short; bits flipped anywhere; header bytes forged (the first 64 bytes
    of the file or of its EXIF block: sizes, modes, chunk lengths, markers); an EXIF entry forged to a known tag with
    any type (a value of the wrong kind for its tag). PNG CRCs are made right again half the time, so a forgery
    reaches the decoder rather than the CRC check."""
    name = draw(st.sampled_from(sorted(REAL)))
    raw = bytearray(REAL[name])
    endian, entries = exif_entries(REAL[name])
    kinds = ["cut", "flip", "header"] + (["exif"] if entries else [])
    chosen = draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=2, unique=True))
    for kind in chosen:
        if kind == "header":
            start = draw(st.sampled_from(headers(REAL[name])))
            for pos, value in draw(st.lists(st.tuples(st.integers(start, min(start + 63, len(raw) - 1)),
                                                      st.integers(0, 255)), min_size=1, max_size=4)):
                raw[pos] = value
        elif kind == "exif":
            at = draw(st.sampled_from(entries))
            raw[at:at + 4] = struct.pack(endian + "HH", draw(st.sampled_from(KNOWN_TAGS)), draw(st.integers(0, 13)))
        elif kind == "flip":
            for pos, bit in draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 7)), min_size=1,
                                          max_size=6)):
                raw[pos] ^= 1 << bit
    if name.startswith("png") and draw(st.booleans()):
        raw = fix_png_crcs(raw)
    if "cut" in chosen:
        raw = raw[:draw(st.integers(1, len(raw) - 1))]
    return bytes(raw)
