"""An image URL from a chat message -> its encoded bytes, refused over the byte limit before it is decoded."""

from __future__ import annotations

import base64
import binascii
import re
import urllib.request

from serve_app.contract import InvalidImage
from serve_app.imaging.limits import ImageLimits

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*),(?P<data>.*)$", re.DOTALL)


def _data_url_bytes(url: str, param: str, limit: int) -> bytes:
    m = _DATA_URL.match(url)
    if m is None or ";base64" not in (m.group("params") or ""):
        raise InvalidImage("image data URL must look like data:image/<type>;base64,<data>", param, "invalid_image_url")
    data = m.group("data").strip()
    if len(data) * 3 // 4 > limit + 3:  # refuse before decoding: base64 is 4 chars per 3 bytes
        raise InvalidImage(f"image is larger than {limit} bytes", param, "image_too_large")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage("image data is not valid base64", param, "invalid_base64") from None


def _remote_bytes(url: str, param: str, opts: ImageLimits) -> bytes:
    if not opts.allow_remote_urls:
        raise InvalidImage("http(s) image URLs are disabled on this server; send a data: URL", param,
                           "remote_url_disabled")
    try:
        with urllib.request.urlopen(url, timeout=opts.fetch_timeout_s) as resp:  # noqa: S310 -- scheme checked
            body = resp.read(opts.max_image_bytes + 1)
    except OSError as e:
        raise InvalidImage(f"could not fetch image: {e}", param, "image_fetch_failed") from None
    return body


def image_bytes(url: str, param: str, opts: ImageLimits) -> bytes:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        raw = _data_url_bytes(url, param, opts.max_image_bytes)
    elif scheme in ("http", "https"):
        raw = _remote_bytes(url, param, opts)
    else:
        raise InvalidImage("image_url must be a data: URL or an http(s) URL", param, "invalid_image_url")
    if len(raw) > opts.max_image_bytes:
        raise InvalidImage(f"image is larger than {opts.max_image_bytes} bytes", param, "image_too_large")
    if not raw:
        raise InvalidImage("image data is empty", param, "invalid_image")
    return raw
