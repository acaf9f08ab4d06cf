"""Tokenizers of every kind real VLM checkpoints ship, made here (nothing downloads), each saved with transformers'
`save_pretrained` and loaded back by transformers, which is the reference:

- `llama2-legacy`, `llama2`: a SentencePiece BPE model with byte fallback trained with `sentencepiece`, converted by
  transformers' `LlamaTokenizer` (Metaspace, `Replace("▁", " ") + ByteFallback + Fuse + Strip` decoder), as
  llava-1.5-7b-hf and bakLLaVA ship;
- `mistral`: the same kind with Mistral's `[INST]`/`[/INST]` special tokens, non-legacy;
- `llama3`: byte-level BPE behind Llama-3's regex split;
- `qwen2`: byte-level BPE behind Qwen2's regex split and NFC, ChatML special tokens;
- `wordpiece`: BERT-style WordPiece, whose decoder joins `##` pieces and whose config turns on
  `clean_up_tokenization_spaces`.
"""

from __future__ import annotations

import random
from pathlib import Path

WORDS = ("a red green blue yellow purple circle square triangle star on the left right top bottom of and with small "
         "large image describe it's don't we're I'm they've . , ! ? ' café naïve über façade 日本 語 東京 中文 🙂 🚀 "
         "hello world 42 3.14").split()

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")

IMAGE_TOKEN = "<image>"
KINDS = ("llama2-legacy", "llama2", "mistral", "llama3", "qwen2", "wordpiece")


# A chat template in each kind's family style (`{% generation %}`, `{% break %}`, `raise_exception`, `{{ bos_token }}`)
PARTS = ("{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
         "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
         "{% endfor %}{% endif %}")
TEMPLATES = {
    # llava-1.5-hf's shape: roles in capitals, images first, assistant text inside {% generation %}
    "llama2": ("{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}"
               "{% endif %}{% if message['role'] == 'assistant' %}{% generation %}" + PARTS + "{% endgeneration %}"
               "{% else %}" + PARTS + "{% endif %}{{ ' ' }}{% endfor %}{% if add_generation_prompt %}ASSISTANT:"
               "{% endif %}"),
    # Mistral's: the template writes BOS, so transformers adds none; alternation enforced with raise_exception
    "mistral": ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0)"
                " %}{{ raise_exception('roles must alternate user/assistant') }}{% endif %}{% if message['role'] == "
                "'user' %}[INST] " + PARTS + " [/INST]{% else %} " + PARTS + "{{ eos_token }}{% endif %}{% endfor %}"),
    # Llama-3's headers, BOS written by the template
    "llama3": ("{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>"
               "\n\n" + PARTS + "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant"
               "<|end_header_id|>\n\n{% endif %}"),
    # ChatML with a default system message found by a loop that breaks
    "qwen2": ("{% set ns = namespace(system=false) %}{% for message in messages %}{% if message['role'] == 'system' %}"
              "{% set ns.system = true %}{% break %}{% endif %}{% endfor %}{% if not ns.system %}<|im_start|>system\n"
              "You are a helpful assistant.<|im_end|>\n{% endif %}{% for message in messages %}<|im_start|>"
              "{{ message['role'] }}\n" + PARTS + "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}"
              "<|im_start|>assistant\n{% endif %}"),
}
TEMPLATES["llama2-legacy"] = TEMPLATES["llama2"]
TEMPLATES["wordpiece"] = TEMPLATES["llama2"]



def corpus(n: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(n)]


def make_tokenizer(kind: str, out: Path):
    """Write a `kind` tokenizer's files into `out` (as save_pretrained does) and return transformers' tokenizer."""
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    tok = _sentencepiece(kind, out) if kind in ("llama2-legacy", "llama2", "mistral") else _tokenizers_object(kind)
    extra = ["[INST]", "[/INST]"] if kind == "mistral" else []
    tok.add_special_tokens({"additional_special_tokens": [*extra, IMAGE_TOKEN]})  # as LLaVA checkpoints add it
    tok.save_pretrained(str(out))
    return AutoTokenizer.from_pretrained(str(out))


def _sentencepiece(kind: str, out: Path):
    import json

    import sentencepiece as spm
    from transformers import AutoTokenizer

    src = out / "spm"
    src.mkdir(exist_ok=True)
    (src / "corpus.txt").write_text("\n".join(corpus()), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(src / "corpus.txt"), model_prefix=str(src / "tokenizer"), vocab_size=420, model_type="bpe",
        byte_fallback=True, character_coverage=0.98, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1,
        user_defined_symbols=["[INST]", "[/INST]"] if kind == "mistral" else [], minloglevel=2)
    config = {"tokenizer_class": "LlamaTokenizer", "legacy": kind == "llama2-legacy", "bos_token": "<s>",
              "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True}
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    return AutoTokenizer.from_pretrained(str(src))


def _tokenizers_object(kind: str):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "wordpiece":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        tok.train_from_iterator(corpus(), trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                       pad_token="[PAD]", mask_token="[MASK]", eos_token="[SEP]",
                                       clean_up_tokenization_spaces=True)
    if kind == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        split, normalizer, bos, eos = LLAMA3_SPLIT, None, "<|begin_of_text|>", "<|eot_id|>"
    else:
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        split, normalizer, bos, eos = QWEN2_SPLIT, normalizers.NFC(), None, "<|im_end|>"
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:  # Llama-3 adds BOS in its post-processor; its chat template writes it too
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos,
                                   clean_up_tokenization_spaces=False)
