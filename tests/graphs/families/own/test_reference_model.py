"""The PyTorch reference is the ground truth for every graph variant, so it is checked against itself first."""

import pytest
import torch
from safetensors.torch import save_file

from graphs.families.own.config import PRESETS, get_preset
from graphs.families.own.model import MultimodalModel, patchify
from graphs.families.own.tokenizer import EOS, build_tokenizer, encode_chat, token_id
from graphs.families.own.weights import WeightsError, load_model, save_weights

TINY = PRESETS["tiny"]


def _pixels(cfg, seed=0, batch=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, cfg.vision.image_size, cfg.vision.image_size), dtype=torch.uint8, generator=g)


def test_patchify_equals_strided_conv():
    x = torch.randn(2, 3, 32, 32)
    conv = torch.nn.Conv2d(3, 5, kernel_size=8, stride=8, bias=False)
    lin = conv.weight.reshape(5, -1)  # (out, C*p*p): the same (C,p,p) flattening order as patchify
    expected = conv(x).flatten(2).transpose(1, 2)  # (B,P,out)
    torch.testing.assert_close(patchify(x, 8) @ lin.T, expected, rtol=1e-4, atol=1e-5)


def test_seeded_weights_are_reproducible_and_seed_dependent():
    a, b = MultimodalModel.seeded(TINY), MultimodalModel.seeded(TINY)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    other = MultimodalModel.seeded(type(TINY)(**{**TINY.__dict__, "seed": 1}))
    assert not torch.equal(a.decoder.wte.weight, other.decoder.wte.weight)


def test_cached_generation_equals_full_recompute():
    model = MultimodalModel.seeded(TINY)
    prompt = [3, 10, 11, 12, 1, 4]
    pixels = _pixels(TINY)
    cached = model.generate_greedy(pixels, prompt, max_new_tokens=12)
    # Without a cache: rerun the whole sequence every step and take the last position's argmax.
    ids, feats = list(prompt), model.vision(pixels)
    with torch.no_grad():
        for _ in range(12):
            x = model.embed_prompt(feats, torch.tensor([ids]))
            logits, _ = model.decoder(x, torch.arange(x.shape[1]).unsqueeze(0))
            ids.append(int(logits[0, -1].argmax()))
    assert cached == ids[len(prompt):]


def test_image_changes_the_generation():
    model = MultimodalModel.seeded(TINY)
    feats_a, feats_b = model.vision(_pixels(TINY, 0)), model.vision(_pixels(TINY, 1))
    assert feats_a.shape == (1, TINY.num_image_tokens, TINY.decoder.width)
    assert not torch.allclose(feats_a, feats_b)


def test_weights_round_trip_and_shape_errors_name_the_tensor(tmp_path):
    model = MultimodalModel.seeded(TINY)
    path = tmp_path / "w.safetensors"
    save_weights(model, path)
    loaded = load_model(TINY, path)
    assert torch.equal(loaded.decoder.lm_head.weight, model.decoder.lm_head.weight)
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    tensors["decoder.wte.weight"] = torch.zeros(10, TINY.decoder.width)
    save_file(tensors, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(WeightsError, match=r"wrong.safetensors: tensor 'decoder\.wte\.weight' has shape \(10, 64\)"):
        load_model(TINY, tmp_path / "wrong.safetensors")
    del tensors["decoder.wte.weight"]
    save_file(tensors, str(tmp_path / "short.safetensors"))
    with pytest.raises(WeightsError, match=r"missing tensor 'decoder\.wte\.weight'"):
        load_model(TINY, tmp_path / "short.safetensors")
    with pytest.raises(WeightsError, match="not found"):
        load_model(TINY, tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="bad.safetensors"):
        load_model(TINY, tmp_path / "bad.safetensors")


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*reference"):
        get_preset("huge")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_tokenizer_vocabulary_matches_the_decoder(name):
    cfg = PRESETS[name]
    tok = build_tokenizer(cfg.decoder.vocab_size)
    assert tok.get_vocab_size() == cfg.decoder.vocab_size
    text = "Describe the image: ünïcode ✓"
    assert tok.decode(tok.encode(text).ids) == text  # byte-level: any text round-trips
    ids = encode_chat(tok, [("user", "hi")])
    assert ids[0] == token_id(tok, "<|user|>") and ids[-1] == token_id(tok, "<|assistant|>")
    assert token_id(tok, EOS) in ids


def test_tokenizer_build_is_deterministic():
    assert build_tokenizer(512).to_str() == build_tokenizer(512).to_str()
