"""Engine knobs. Slots and context size the KV cache at start; the others may change while serving."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slots: int = Field(16, ge=1, le=1024, description="sequences decoded together; the KV cache holds this many rows")
    max_context: int | None = Field(None, ge=2, description="positions per cache row (prompt + generated); "
                                                            "None = the model's position table size")
    kv_cache_gib: float | None = Field(None, gt=0, description="KV cache budget in GiB: the cache holds as many "
                                                               "slots of max_context positions as fit in it, at "
                                                               "most `slots` (the variant's cache dtype sets the "
                                                               "bytes per position); None = `slots` slots. The plan "
                                                               "must fit the node's available memory either way")
    max_queue: int = Field(64, ge=0, description="requests waiting for a slot beyond `slots`; more are refused "
                                                 "with Overloaded (HTTP 503)")
    prefill_token_budget: int = Field(256, ge=1, description="prompt positions prefilled between two decode steps; "
                                                             "a longer prompt is prefilled in chunks over several "
                                                             "steps, so arrivals stall running streams by at most "
                                                             "this much work")
    stream_interval_s: float = Field(0.0, ge=0.0, le=1.0, description="shortest time between two chunks of one "
                                                                       "stream; tokens of the steps in between go "
                                                                       "out together (fewer, larger chunks cost the "
                                                                       "serving path less); 0 = a chunk per step")
    max_chunk_rate: float = Field(0.0, ge=0.0, description="chunks per second across all streams of the engine; "
                                                           "the stream interval stretches to active streams / rate "
                                                           "when that is longer; 0 = no limit")
    lone_prompt_logits: bool = Field(True, description="a prompt that would be a step's only decode row is "
                                     "prefilled with its last position and that call's logits give its first "
                                     "token: a lone request's first token one decode step sooner. Its first "
                                     "token's logits then come from a prefill call, not a decode call: equal to "
                                     "float rounding, so with False a seeded request's every token is bit-for-bit "
                                     "the same alone or among others")
    scheduling: Literal["continuous", "run_to_completion"] = Field(
        "continuous", description="'continuous' admits into free slots at every step; 'run_to_completion' starts a "
                                  "batch only when the previous one has fully finished (the baseline benchmarks "
                                  "compare against)")
    batch_wait_s: float = Field(0.01, ge=0.0, description="run_to_completion only: how long to wait for a full "
                                                          "batch before starting a partial one")
    retry_after_s: float = Field(1.0, gt=0.0, description="Retry-After hint carried by Overloaded")
