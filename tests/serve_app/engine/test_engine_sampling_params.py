"""The sampling parameters through the engine on the numpy fake graph: stop_token_ids end a completion like eos,
min_tokens holds them off, penalties see the sequence's own tokens, logprobs ride with each chunk's tokens, and a
row answers the same whatever shares its batch."""

import asyncio

import numpy as np
import pytest
from engine_fakes import FakeModel, FakeRunner, make_embeddings, make_tokenizer

from serve_app.engine import Engine, EngineConfig
from serve_app.contract import DecodeRequest, TokenSegment

TOK = make_tokenizer()
TABLE = make_embeddings()
MODEL = FakeModel()
NO_EOS = 511  # an eos id the fake model never favours here: completions end by our parameters or by length


def engine(slots=8) -> Engine:
    return Engine(FakeRunner(MODEL, slots, 96, None, 0.001), TABLE, TOK, [NO_EOS],
                  EngineConfig(slots=slots, max_context=96))


def req(i=0, max_tokens=12, **kw) -> DecodeRequest:
    ids = np.random.default_rng(100 + i).integers(10, 500, 6).tolist()
    return DecodeRequest(f"r{i}", [TokenSegment(ids)], max_tokens, temperature=kw.pop("temperature", 0.0), **kw)


def run(reqs, slots=8):
    async def go():
        e = engine(slots)
        try:
            return await asyncio.gather(*(collect(e, r) for r in reqs))
        finally:
            await e.close()
    return asyncio.run(go())


async def collect(e, r):
    return [c async for c in e.generate(r)]


def tokens(chunks):
    return [t for c in chunks for t in c.token_ids]


def test_a_stop_token_id_ends_the_completion_with_stop_and_min_tokens_holds_it_off():
    (free,) = run([req()])
    greedy = tokens(free)
    stop = greedy[2]
    first = greedy.index(stop)
    (stopped,) = run([req(stop_token_ids=[stop])])
    assert tokens(stopped) == greedy[:first + 1] and stopped[-1].finish_reason == "stop"
    (held,) = run([req(stop_token_ids=[stop], min_tokens=first + 2)])
    out = tokens(held)
    assert stop not in out[:first + 2] and len(out) >= first + 2


def test_repetition_penalty_changes_a_repetitive_greedy_answer():
    (plain,) = run([req(max_tokens=20)])
    (penal,) = run([req(max_tokens=20, repetition_penalty=3.0)])
    a, b = tokens(plain), tokens(penal)
    assert a != b and len(set(b)) >= len(set(a))


def test_logprobs_come_with_every_token_and_name_it():
    (chunks,) = run([req(logprobs=3)])
    entries = [e for c in chunks for e in c.logprobs]
    ids = tokens(chunks)
    assert len(entries) == len(ids)
    for tok, e in zip(ids, entries):
        assert e.token == TOK.decode([tok], skip_special_tokens=False) and e.bytes == list(e.token.encode())
        assert len(e.top) == 3 and e.top[0].logprob >= e.top[-1].logprob
        assert e.top[0].token == e.token and e.logprob == pytest.approx(e.top[0].logprob)  # greedy: the top one
    (plain,) = run([req()])
    assert all(c.logprobs is None for c in plain)


def test_each_row_is_the_same_alone_and_in_a_mixed_batch():
    mixed = [req(0, temperature=0.8, seed=1, top_k=20, repetition_penalty=1.3, logprobs=2),
             req(1, temperature=0.0, presence_penalty=1.0, frequency_penalty=0.5),
             req(2, temperature=1.2, seed=2, min_p=0.05, min_tokens=5, top_p=0.9),
             req(3, temperature=1.0, seed=3)]
    together = run(mixed)
    for r, chunks in zip(mixed, together):
        (alone,) = run([r])
        assert tokens(alone) == tokens(chunks)


def test_image_positions_count_as_the_placeholder_id_for_the_repetition_penalty():
    from serve_app.contract import FeatureSegment

    feats = FeatureSegment(np.zeros((4, TABLE.shape[1]), np.float32))
    with_image = DecodeRequest("r", [TokenSegment([3, 4]), feats, TokenSegment([5])], 4, image_token_id=300)
    text_only = DecodeRequest("r", [TokenSegment([3, 4, 5])], 4, image_token_id=300)
    e = engine()
    assert sorted(e._prompt_ids(with_image)) == [3, 4, 5, 300] and e._prompt_ids(text_only) == [3, 4, 5]


def test_a_stop_string_ends_nothing_before_min_tokens():
    (free,) = run([req()])
    text = "".join(c.text for c in free)
    at = next(i for i in range(len(text) - 2) if "\ufffd" not in text[i:i + 3])
    (stopped,) = run([req(stop=[text[at:at + 3]])])
    n = len(tokens(stopped))
    assert n < 9 and stopped[-1].finish_reason == "stop"
    (held,) = run([req(stop=[text[at:at + 3]], min_tokens=n + 3)])
    assert len(tokens(held)) >= n + 3
