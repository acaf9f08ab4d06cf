"""A checkpoint's generation_config.json: its extra eos ids and the sampling defaults serving applies where a request
is silent (recorded in the manifest as DecoderSpec.generation).

What is read, and how it maps (vLLM's `get_diff_sampling_param` reads the same keys):
    temperature, top_p, top_k, min_p, repetition_penalty   as they are
    max_new_tokens                                          the default max_tokens (still capped by the context)
    do_sample: false                                        temperature 0 (greedy)
    eos_token_id (int or list)                              more eos ids

`do_sample`: transformers' generate() decodes greedily when it is false, whatever the temperature; vLLM ignores the
key and samples at the file's temperature (or 1.0). An explicit `do_sample: false` is the checkpoint's author asking
for greedy decoding, so it is honoured as transformers honours it. An absent `do_sample` is not read as false
(transformers' default): `save_pretrained` leaves out every default-valued key, so absence says nothing, and a
checkpoint without sampling keys keeps the server's defaults, as under vLLM. Likewise transformers' implicit
`top_k=50` is not applied: only keys the file sets count.

A key of the wrong type or out of range is a CheckpointError naming the file and the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from graphs.families.llava.checkpoint import _Fields as Fields, _read_json as read_json

FILE = "generation_config.json"


@dataclass(frozen=True)
class Generation:
    eos_token_ids: tuple[int, ...] = ()
    defaults: tuple[tuple[str, float | int], ...] = ()  # (GenerationDefaults field, value) for each key the file sets

    def defaults_dict(self) -> dict:
        return dict(self.defaults)


# key -> (type, check, what the check requires)
_RANGES = {
    "temperature": (float, lambda v: v >= 0.0, ">= 0"),
    "top_p": (float, lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "top_k": (int, lambda v: v >= 0, ">= 0"),
    "min_p": (float, lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "repetition_penalty": (float, lambda v: v > 0.0, "> 0"),
    "max_new_tokens": (int, lambda v: v >= 1, ">= 1"),
}


def read_generation(directory: Path) -> Generation:
    path = directory / FILE
    data = read_json(path, required=False)
    if data is None:
        return Generation()
    f = Fields(path, data)
    raw_eos = f.get("eos_token_id", (int, list), None)
    eos = [raw_eos] if isinstance(raw_eos, int) else list(raw_eos or [])
    if any(not isinstance(e, int) or isinstance(e, bool) or e < 0 for e in eos):
        f.fail("eos_token_id", f"expected a token id or a list of them, got {raw_eos!r}")
    defaults: dict[str, float | int] = {}
    for key, (kind, ok, requirement) in _RANGES.items():
        value = f.get(key, kind, None)
        if value is not None:
            if not ok(value):
                f.fail(key, f"{value!r} is not {requirement}")
            defaults[key] = value
    if f.get("do_sample", bool, None) is False:
        defaults["temperature"] = 0.0
    return Generation(tuple(dict.fromkeys(eos)), tuple(defaults.items()))
