"""Body size and JSON nesting limits: refused as 4xx API errors before memory or the parser's stack is spent."""

from __future__ import annotations

import asyncio
import json

import pytest

from serve_app.api.chat import parse_request
from serve_app.config import parse_args
from serve_app.api.errors import InvalidRequest, RequestTooLarge, to_error
from serve_app.api.request_limits import (check_content_length, deeper_than, default_max_request_bytes,
                                          read_limited)


def nested(depth: int, leaf=1):
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def test_hundred_thousand_nested_arrays_are_a_400_not_a_recursion_error():
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(InvalidRequest) as e:
        parse_request(body)
    status, err, _ = to_error(e.value)
    assert status == 400 and err.error.code == "json_too_deep"


@pytest.mark.parametrize("depth", [1, 5, 31, 32, 33, 100])
def test_depth_limit_is_exact(depth):
    assert deeper_than(json.dumps(nested(depth)).encode(), 32) == (depth > 32)
    obj = {"k": {"k": nested(depth - 2, {})}} if depth >= 2 else {}
    assert deeper_than(json.dumps(obj).encode(), 32) == (depth + 1 > 32)


def test_brackets_inside_strings_do_not_count():
    body = json.dumps({"messages": [{"role": "user", "content": '[[[[{{{{\\"' * 200}]}).encode()
    assert not deeper_than(body, 8)


def test_unclosed_brackets_count_as_depth():
    assert deeper_than(b"[" * 40, 32) and not deeper_than(b"[" * 20, 32)
    assert not deeper_than(b"]" * 1000 + b"[", 32)


def test_wide_flat_body_is_not_deep():
    assert not deeper_than(b"[" + b"[]," * 1_000_000 + b"[]]", 4)


def test_content_length_over_limit_is_413():
    with pytest.raises(RequestTooLarge) as e:
        check_content_length("1001", 1000)
    status, err, _ = to_error(e.value)
    assert status == 413 and err.error.code == "request_too_large" and "1001" in err.error.message
    check_content_length("1000", 1000)
    check_content_length(None, 1000)
    with pytest.raises(InvalidRequest):
        check_content_length("lots", 1000)


def test_chunked_body_is_cut_as_soon_as_it_passes_the_limit():
    sent = []

    async def chunks():
        for _ in range(100):
            sent.append(1)
            yield b"x" * 300

    with pytest.raises(RequestTooLarge):
        asyncio.run(read_limited(chunks(), 1000))
    assert len(sent) == 4  # 1200 bytes > 1000: nothing after the fourth chunk was pulled
    assert asyncio.run(read_limited(chunks(), 30_000)) == b"x" * 30_000


def test_error_keeps_its_fields_across_pickling():
    import pickle

    e = pickle.loads(pickle.dumps(RequestTooLarge(5000, 1000)))
    assert (e.status, e.code, e.declared, e.limit) == (413, "request_too_large", 5000, 1000)


def test_default_body_limit_follows_the_image_limits():
    args = parse_args({"ingress": {"max_images_per_request": 2}, "preprocess": {"max_image_bytes": 300_000}})
    assert args.ingress.max_request_bytes == default_max_request_bytes(300_000, 2) == 2 * 400_000 + 1024 * 1024
    assert parse_args({"ingress": {"max_request_bytes": 5000}}).ingress.max_request_bytes == 5000
