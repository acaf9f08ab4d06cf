"""The tokenizer files as transformers runs them: what a checkpoint's tokenizer.json becomes once transformers has
loaded it (some settings live in tokenizer_config.json), whether it is the file as shipped, and whether its decode
cleans up spaces. The build writes the artifact's tokenizer from these; serving then gives transformers' ids and text.
"""

from __future__ import annotations

import json
from pathlib import Path

from graphs.families.llava.checkpoint import _Fields, _read_json


def cleans_up_spaces(tokenizer_json: Path, tokenizer_config: Path) -> bool:
    """Whether transformers' decode applies its clean-up (" ." -> "." ...) to this checkpoint's text: the config's
    `clean_up_tokenization_spaces` (default off), which transformers ignores for BPE models."""
    flag = _Fields(tokenizer_config, _read_json(tokenizer_config)).get("clean_up_tokenization_spaces", bool, False)
    return flag and json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"].get("type") != "BPE"


def effective_tokenizer_json(directory: Path) -> str:
    """tokenizer.json as transformers runs it, which is not always the file: loading rebuilds parts of some tokenizers
    from tokenizer_config.json (LlamaTokenizer's Metaspace `prepend_scheme` from `legacy`/`add_prefix_space`, its
    BOS/EOS post-processor from `add_bos_token`/`add_eos_token`). Serving reads this, so its ids are transformers'."""
    from transformers import AutoTokenizer

    backend = AutoTokenizer.from_pretrained(str(directory)).backend_tokenizer
    backend.no_truncation()  # transformers' call-time settings, never the model's
    backend.no_padding()
    return backend.to_str(pretty=True)


def same_tokenizer(a: str, b: str) -> bool:
    """Two tokenizer.json texts that tokenize and decode alike: equal once parsed, a post-processor that adds no
    token (transformers writes `$A` templates for tokenizers without BOS/EOS) counting as none."""
    from tokenizers import Tokenizer

    def canonical(text: str) -> dict:
        tok = json.loads(Tokenizer.from_str(text).to_str())
        post = tok.get("post_processor") or {}
        if post.get("type") == "TemplateProcessing" and not post.get("special_tokens"):
            tok["post_processor"] = None
        return tok

    return canonical(a) == canonical(b)
