"""Limits on a request body, checked before it costs memory or a parser's stack.

    Content-Length over the limit -> 413 request_too_large, before a byte of the body is read
    chunked (no Content-Length)    -> bytes counted while streaming; 413 as soon as they pass the limit
    JSON nested deeper than limit  -> 400 json_too_deep, found by a scan without recursion before json.loads
                                      (the C parser raises RecursionError near a thousand levels)

The default body limit follows from the image limits (api/options.py: every allowed image at its byte limit,
base64-encoded, plus room for the text of the messages).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from serve_app.api.errors import InvalidRequest, RequestTooLarge
from serve_app.api.options import DEFAULT_MAX_JSON_DEPTH, default_max_request_bytes  # noqa: F401 -- re-exported

# A JSON string (possessive: no backtracking on a 10 MB base64 string); brackets inside strings go with it.
_STRINGS = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
# Keep only brackets, objects' as arrays': depth is the same, and one pair "[]" is then all there is to remove.
_BRACKETS_ONLY = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


def check_content_length(header: str | None, limit: int) -> None:
    if header is None:
        return
    try:
        declared = int(header)
    except ValueError:
        raise InvalidRequest(f"Content-Length {header!r} is not a number", None, "invalid_content_length") from None
    if declared > limit:
        raise RequestTooLarge(declared, limit)


async def read_limited(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole body, refused as soon as it grows past `limit` bytes (a chunked body declares no length)."""
    parts: list[bytes] = []
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise RequestTooLarge(None, limit)
        parts.append(chunk)
    return b"".join(parts)


async def read_body(request, limit: int) -> bytes:
    """A Starlette request's body within `limit` bytes: the declared length first, then the bytes that arrive."""
    check_content_length(request.headers.get("content-length"), limit)
    return await read_limited(request.stream(), limit)


SCAN_SLICE_BYTES = 1 << 20  # one C call's share of a scan: the GIL changes hands between them


def _count(body: bytes, byte: bytes) -> int:
    """body.count(byte) a slice at a time: run in a worker thread, a 50 MB scan in one call would hold the GIL, and
    so the ingress's event loop, for all of it."""
    return sum(body.count(byte, i, i + SCAN_SLICE_BYTES) for i in range(0, len(body), SCAN_SLICE_BYTES))


def deeper_than(body: bytes, limit: int) -> bool:
    """Whether arrays/objects in `body` nest more than `limit` deep, with no recursion and no Python loop over
    the bytes (a body of 20 MB of "[]" must cost milliseconds, not seconds).

    Strings removed, only brackets left; each pass removes every innermost pair "[]", i.e. one level of every
    structure, so a body still holding a pair after `limit` passes is deeper than `limit`. What is left when no
    pair remains is unbalanced: "]]][[[" -- the unclosed opening brackets are depth the parser would recurse into.
    """
    if _count(body, b"[") + _count(body, b"{") <= limit:  # no more openings than the limit: none nests deeper
        return False  # (a chat body is mostly one base64 string, which the regex below would walk for nothing)
    skeleton = _STRINGS.sub(b"", body).translate(_BRACKETS_ONLY, _NOT_BRACKETS)
    for _ in range(limit):
        reduced = skeleton.replace(b"[]", b"")
        if reduced == skeleton:
            break
        skeleton = reduced
    unclosed = len(skeleton.lstrip(b"]"))
    return b"[]" in skeleton or unclosed > limit


def check_json_depth(body: bytes, limit: int) -> None:
    if deeper_than(body, limit):
        raise InvalidRequest(f"request body nests JSON arrays/objects more than {limit} levels deep", None,
                             "json_too_deep")
