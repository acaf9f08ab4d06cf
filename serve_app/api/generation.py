"""A request's sampling values: what the request says, else the checkpoint's generation_config (the manifest's
DecoderSpec.generation), else the server's default -- vLLM's order (its `default_sampling_params` from
`get_diff_sampling_param`). The checkpoint's `max_new_tokens` is the default max_tokens, capped by the context
(chat.plan_tokens).
"""

from __future__ import annotations

from mmcore.manifest import GenerationDefaults
from serve_app.api.errors import InvalidRequest
from serve_app.api.protocol import ChatCompletionRequest

# What a request gets when neither it nor the checkpoint sets a field: OpenAI's defaults, and no cut or penalty.
SERVER_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}


def sampling_fields(req: ChatCompletionRequest, defaults: GenerationDefaults, vocab_size: int | None) -> dict:
    """-> the DecodeRequest keyword arguments for sampling; InvalidRequest (400 naming the field) for a token id
    outside the vocabulary."""
    chosen = {}
    for name, server in SERVER_DEFAULTS.items():
        asked = getattr(req, name)
        chosen[name] = asked if asked is not None else getattr(defaults, name) if \
            getattr(defaults, name) is not None else server
    chosen["top_k"] = max(chosen["top_k"], 0)  # vLLM's -1 and 0 both mean every token
    stop_ids = list(req.stop_token_ids or [])
    for i, token in enumerate(stop_ids):
        if vocab_size is not None and token >= vocab_size:
            raise InvalidRequest(f"stop_token_ids.{i}: {token} is outside the vocabulary of {vocab_size} tokens",
                                 f"stop_token_ids.{i}", "invalid_value")
    return chosen | dict(presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
                         stop_token_ids=stop_ids, min_tokens=req.min_tokens, logprobs=req.logprobs_count())
