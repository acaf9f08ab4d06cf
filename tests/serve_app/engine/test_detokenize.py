"""Incremental detokenization: split multi-byte characters, stop strings across tokens, held-back text."""

import pytest

from graphs.families.own.tokenizer import build_tokenizer
from serve_app.engine.detokenize import IncrementalDetokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(512)


def stream(tok, ids, stop=None):
    d = IncrementalDetokenizer(tok, stop)
    parts = [d.add([i]) for i in ids]
    if not d.stopped:
        parts.append(d.flush())
    return parts, d.stopped


def test_multibyte_characters_split_across_byte_tokens_come_out_whole(tok):
    ids = tok.encode("héllo 日本 ok", add_special_tokens=False).ids
    parts, _ = stream(tok, ids)
    assert "".join(parts) == "héllo 日本 ok"
    assert all("\ufffd" not in p for p in parts)
    assert len(ids) > len("héllo 日本 ok".encode()) / 4  # byte-level pieces really were split


def test_stop_string_spanning_tokens_is_not_returned(tok):
    ids = tok.encode("the quick brown fox jumps", add_special_tokens=False).ids
    parts, stopped = stream(tok, ids, stop=["brown f"])
    assert stopped
    assert "".join(parts) == "the quick "


def test_text_that_may_start_a_stop_string_is_held_back_then_released(tok):
    d = IncrementalDetokenizer(tok, ["brown fox"])
    first = "".join(d.add([i]) for i in tok.encode("the quick brown", add_special_tokens=False).ids)
    assert first == "the quick "  # "brown" could still become "brown fox"
    rest = "".join(d.add([i]) for i in tok.encode(" dog", add_special_tokens=False).ids)
    assert rest == "brown dog" and not d.stopped
    assert d.flush() == ""


def test_special_tokens_are_not_text(tok):
    ids = tok.encode("hello", add_special_tokens=False).ids + [tok.token_to_id("<|end|>")]
    parts, _ = stream(tok, ids)
    assert "".join(parts) == "hello"


def test_incomplete_bytes_at_the_end_are_flushed_as_replacement(tok):
    ids = tok.encode("日", add_special_tokens=False).ids
    assert len(ids) > 1
    d = IncrementalDetokenizer(tok)
    assert d.add(ids[:-1]) == ""
    assert d.flush() == "\ufffd"
