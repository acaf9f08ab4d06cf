"""Streamed text equals transformers' `decode(all_ids, skip_special_tokens=True)` for every tokenizer kind real
checkpoints ship (tests/tokenizer_kinds.py), over random id sequences (byte-fallback and byte-level pieces of
multi-byte characters, special tokens, garbage bytes) cut into random chunks. The reference is transformers'
tokenizer loaded from the saved files; the code under test reads only tokenizer.json and tokenizer_config.json."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from graphs.families.llava.tokenizer_files import cleans_up_spaces, effective_tokenizer_json
from serve_app.engine.detokenize import IncrementalDetokenizer
from tests.tokenizer_kinds import KINDS, make_tokenizer

SENTENCES = ["a red circle on the left, it's 日本 🙂 café.", "we're small! don't go ? 東京 🚀 über 42 3.14",
             "I'm naïve . ' they've façade 中文"]


@pytest.fixture(scope="module", params=KINDS)
def kind(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    reference = make_tokenizer(request.param, out)
    served = Tokenizer.from_str(effective_tokenizer_json(out))  # what a build writes into the artifacts
    return request.param, reference, served, cleans_up_spaces(out / "tokenizer.json", out / "tokenizer_config.json")


def streamed(served, clean_up, ids, cuts, stop=None):
    d = IncrementalDetokenizer(served, stop, clean_up_spaces=clean_up)
    bounds = [0, *sorted(set(cuts)), len(ids)]
    parts = [d.add(ids[a:b]) for a, b in zip(bounds, bounds[1:])]
    parts.append(d.flush())
    return parts, d.stopped


@st.composite
def ids_and_cuts(draw, vocab_size):
    ids = draw(st.lists(st.integers(0, vocab_size - 1), max_size=40))
    cuts = draw(st.lists(st.integers(0, len(ids)), max_size=len(ids)))
    return ids, cuts


def test_the_kinds_are_what_they_claim(kind):
    name, reference, served, clean_up = kind
    decoder = str(served.decoder)
    expected = {"llama2-legacy": "Strip", "llama2": "Strip", "mistral": "Strip", "llama3": "ByteLevel",
                "qwen2": "ByteLevel", "wordpiece": "WordPiece"}[name]
    assert expected in decoder
    assert clean_up == (name == "wordpiece")  # the build reads the flag as transformers applies it
    assert clean_up == (reference.clean_up_tokenization_spaces and "BPE" not in str(served.model))
    ids = reference.encode(SENTENCES[0], add_special_tokens=False)
    assert "".join(served.decode([i]) for i in ids) != reference.decode(ids)  # one by one really is wrong here


@pytest.mark.parametrize("sentence", SENTENCES)
def test_token_by_token_stream_equals_transformers_decode(kind, sentence):
    _, reference, served, clean_up = kind
    ids = reference.encode(sentence, add_special_tokens=True)
    parts, _ = streamed(served, clean_up, ids, range(len(ids)))
    assert "".join(parts) == reference.decode(ids, skip_special_tokens=True)


def test_random_ids_in_random_chunks_equal_transformers_decode(kind):
    _, reference, served, clean_up = kind

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(ids_and_cuts(len(reference)))
    def check(case):
        ids, cuts = case
        parts, _ = streamed(served, clean_up, ids, cuts)
        assert "".join(parts) == reference.decode(ids, skip_special_tokens=True)

    check()


def test_stop_string_cuts_the_stream_where_transformers_text_has_it(kind):
    _, reference, served, clean_up = kind
    ids = reference.encode(SENTENCES[1], add_special_tokens=False)
    full = reference.decode(ids, skip_special_tokens=True)
    stop = "go ?" if "go ?" in full else "go?"
    parts, stopped = streamed(served, clean_up, ids, range(len(ids)), stop=[stop])
    assert stopped and "".join(parts) == full[:full.index(stop)]
