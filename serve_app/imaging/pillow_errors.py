"""Whatever Pillow raises while it reads a client's image is that image's fault: a 400, never a 500.

Pillow's plugins do not keep to one exception type on bad data: a truncated or forged file surfaces as OSError,
SyntaxError, EOFError, struct.error, IndexError, ValueError, and a forged EXIF block, read fine, fails only when
`ImageOps.exif_transpose` writes it back, as TypeError, AttributeError, KeyError or OverflowError. No list of types
stays complete, so every exception raised inside `pillow_reading` is mapped, except those with their own meaning:
an InvalidImage already raised (a more precise message), the decompression-bomb refusal (handled where the header
is read) and MemoryError (the server's trouble, not the image's).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

from serve_app.contract import InvalidImage

NOT_THE_IMAGES_FAULT = (MemoryError, InvalidImage, Image.DecompressionBombError, Image.DecompressionBombWarning)


def corrupt_image(exc: Exception, param: str) -> InvalidImage:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return InvalidImage(f"image data is truncated or corrupt ({detail})", param, "invalid_image")


@contextmanager
def pillow_reading(param: str) -> Iterator[None]:
    """Around Pillow calls on client bytes: any exception they raise is InvalidImage (400) naming `param`."""
    try:
        yield
    except NOT_THE_IMAGES_FAULT:
        raise
    except Exception as e:  # noqa: BLE001 -- any failure to read the client's bytes is a bad image
        raise corrupt_image(e, param) from None
