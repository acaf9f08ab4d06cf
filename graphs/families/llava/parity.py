"""The parity gate for LLaVA checkpoints: every variant against transformers' LlavaForConditionalGeneration on the
same checkpoint (reference.py), on fixed seeded inputs, at every build. A variant past its bounds is left out of
the artifact (graphs/gate.py: when that fails the build instead).

What is measured
- vision: a seeded batch of 2 (dynamic batch exercised) -> max abs error and cosine of the projected features.
- decoder (fed the reference's own image features, so decoder error is not vision error):
  * prefill: image + prompt in one call, and the same prompt in two chunks into a slot (the second chunk lands
    past `start` cached tokens, as the engine's staged prefill does): last-position logits vs the reference;
  * greedy: GREEDY_TOKENS tokens after image + prompt through serving's runner vs transformers' `generate`;
  * teacher-forced ragged decode: CONTEXTS rows of different lengths (row 0 with the image) prefilled one by one,
    then FORCED_STEPS decode steps over all rows at once: every step's logits vs a reference forward of each row.

Bounds, and why
- fp32: logits and features max abs error <= FP32_REL of the reference's largest |logit| (or |feature|), floor 1.
  ORT and PyTorch sum in different orders (MLAS blocked GEMMs, fused softmax/RMSNorm), so fp32 results differ by
  rounding only: measured on the tiny test checkpoints ~1e-7 absolute on logits of magnitude ~1. 1e-4 leaves three
  orders of headroom (deeper models accumulate more rounding) while a wrong rotary position, a mis-ordered head or
  a missing bias moves logits by 1e-2 or more. Greedy tokens must be identical.
- fp16 (portable vision): cosine >= FP16_MIN_COSINE; an 11-bit mantissa makes only a relative check meaningful.
- int8 / int4: vision cosine >= QUANT_MIN_COSINE (int8 only; vision has no int4 variant). Decoder: the RMS logit
  error over the teacher-forced contexts, relative to the reference's logit std, <= NOISE_REL[precision]; and
  next-token top-1 agreement >= QUANT_MIN_TOP1 over the contexts that are decisive *at the measured noise level*:
  reference top-2 margin >= 2 sqrt(2) x (measured RMS logit error). Why: noise of RMS e on two logits flips them
  with probability Phi(-margin / (sqrt(2) e)), so at that margin a correct variant flips under 2.3% of contexts,
  and 90% leaves room for a heavier-than-Gaussian tail; near-ties (most contexts of a random-weight checkpoint,
  whose logits are nearly flat) flip at any precision and are not gated. With fewer than MIN_DECISIVE decisive
  contexts the agreement says nothing and only the RMS bound gates (recorded as `top1_gated: false`).
  NOISE_REL: 8-bit per-column weights (uint8, zero point 128: graphs.emit.quantize) with per-tensor uint8
  activations perturb a GEMM by ~1-2% of its output std, int4 blocks of 32 (scale max/7) by ~9%; with about seven GEMMs on the path to
  a logit, the tiny test checkpoints measure RMS error/std ~0.05 (int8) and ~0.35 (int4). The bounds leave 2-3x
  headroom, while a wrong packing, a transposed weight or a lost bias gives an error of the order of the std
  itself (ratio >= 1). Also recorded, ungated: the max abs logit error, agreement over all contexts, the
  decisive count.
- a quantized KV cache (`-kv8`), on top of its precision's bounds: against its same-weights float-cache sibling,
  kv_parity.py (what it measures and why its bounds).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from graphs.families.llava import kv_parity
from graphs.determinism import cosine
from graphs.families.llava.checkpoint import Checkpoint
from graphs.families.llava.driver import embed, open_runner
from mmcore.manifest import KvCacheEntry
from graphs.verify import ParityError  # one error type for every family's gate; the build and the CLI catch it

FP32_REL = 1e-4
FP16_MIN_COSINE = 0.999
QUANT_MIN_COSINE = 0.99
QUANT_MIN_TOP1 = 0.9
MIN_DECISIVE = 8
NOISE_REL = {"fp32": 1e-4, "int8": 0.15, "int4": 0.7}
GREEDY_TOKENS = 32
CONTEXTS = 8
FORCED_STEPS = 16
SEED = 1234
# Views per vision call in the gates: serving's batch bound (configs: max_batch_size 8). Many views in one call hold
# every layer's activations of all of them at once (a real-dims SigLIP's 37 gate views held 21 GB); chunks of 8
# still exercise the dynamic batch axis and give the same features, since views are independent.
VIEW_CHUNK = 8


def session(model_bytes: bytes, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def pixels(ck: Checkpoint, batch: int, seed: int) -> np.ndarray:
    size = ck.vision.image_size
    return np.random.default_rng(seed).integers(0, 256, (batch, 3, size, size), dtype=np.uint8)


def run_views(model_bytes: bytes, px: np.ndarray) -> np.ndarray:
    """The vision graph's features of views px (V,3,S,S) uint8, VIEW_CHUNK views a call."""
    sess = session(model_bytes)
    return np.concatenate([sess.run(None, {"pixels": px[i:i + VIEW_CHUNK]})[0]
                           for i in range(0, len(px), VIEW_CHUNK)])


def vision_run(ref, model_bytes: bytes) -> tuple[dict, np.ndarray, np.ndarray]:
    """-> (figures against the reference, the seeded batch of 2 they were measured on, the graph's features)."""
    px = pixels(ref.ck, 2, SEED)
    got = run_views(model_bytes, px)
    return feature_figures(got, ref.image_features(px)), px, got


def vision_figures(ref, model_bytes: bytes) -> dict:
    return vision_run(ref, model_bytes)[0]


def feature_figures(got: np.ndarray, want: np.ndarray) -> dict:
    """The vision figures the bounds read: the graph's features against the reference's."""
    return {"feature_max_abs_err": float(np.abs(got - want).max()), "feature_cosine": cosine(got, want),
            "feature_scale": float(max(1.0, np.abs(want).max()))}


class Inputs:
    """The seeded prompts and the reference's answers, computed once per build and shared by every variant."""

    def __init__(self, ref):
        ck, rng = ref.ck, np.random.default_rng(SEED + 1)
        self.table, self.image_token = ref.token_embeddings(), ck.image_token_id
        text = [i for i in range(ck.text.vocab_size) if i != ck.image_token_id]
        self.pixels = pixels(ck, 1, SEED + 2)
        self.features = ref.prompt_features(self.pixels)  # (T,D): what the image's placeholders take
        image = [ck.image_token_id] * len(self.features)
        self.prompt = rng.choice(text, 5).tolist() + image + rng.choice(text, 7).tolist()
        self.prompt_logits = ref.logits(self.prompt, self.pixels)[-1]  # (V,)
        self.greedy = ref.greedy(self.prompt, self.pixels, GREEDY_TOKENS)
        self.rows = [rng.choice(text, int(rng.integers(3, 15)) + FORCED_STEPS).tolist() for _ in range(CONTEXTS)]
        self.rows[0] = self.prompt + self.rows[0]
        # logits predicting each forced token: positions len-FORCED_STEPS-1 .. len-2 of each row
        self.forced = np.concatenate([ref.logits(r, self.pixels if i == 0 else None)[-FORCED_STEPS - 1:-1]
                                      for i, r in enumerate(self.rows)])  # (CONTEXTS*FORCED_STEPS, V)

    def embeds(self, ids: list[int]) -> np.ndarray:
        return embed(ids, self.table, self.image_token, self.features if self.image_token in ids else None)


def _prefill_figures(runner, inp: Inputs) -> dict:
    x = inp.embeds(inp.prompt)
    whole = runner.prefill(0, x).copy()
    cut = len(inp.prompt) // 2
    runner.prefill(1, x[:cut])
    chunked = runner.prefill(1, x[cut:], cut).copy()
    return {"prefill_logits_max_abs_err": float(np.abs(whole - inp.prompt_logits).max()),
            "chunked_prefill_logits_max_abs_err": float(np.abs(chunked - inp.prompt_logits).max())}


def _greedy_figures(runner, inp: Inputs) -> dict:
    logits, tokens = runner.prefill(0, inp.embeds(inp.prompt)), []
    for _ in range(len(inp.greedy)):
        tokens.append(int(logits.argmax()))
        logits = runner.decode(1, inp.table[[tokens[-1]]], np.array([len(inp.prompt) + len(tokens) - 1]))[0]
    same = next((i for i, (a, b) in enumerate(zip(tokens, inp.greedy)) if a != b), len(inp.greedy))
    return {"greedy_tokens": len(inp.greedy), "greedy_identical": tokens == inp.greedy, "greedy_matching_prefix": same}


def _forced_figures(runner, inp: Inputs) -> tuple[dict, np.ndarray]:
    got = [[runner.prefill(r, inp.embeds(row[:-FORCED_STEPS])).copy()] for r, row in enumerate(inp.rows)]
    lengths = np.array([len(row) - FORCED_STEPS for row in inp.rows])
    for t in range(FORCED_STEPS - 1):
        tok = [row[len(row) - FORCED_STEPS + t] for row in inp.rows]
        for r, logits in enumerate(runner.decode(len(inp.rows), inp.table[tok], lengths)):
            got[r].append(logits.copy())
        lengths = lengths + 1
    mine, ref = np.concatenate([np.stack(g) for g in got]), inp.forced
    top2 = np.sort(ref, axis=-1)[:, -2:]
    rms = float(np.sqrt(np.mean((mine - ref) ** 2)))
    margin = 2 * np.sqrt(2) * rms
    decisive = top2[:, 1] - top2[:, 0] >= margin
    agree = ref.argmax(-1) == mine.argmax(-1)
    return {"forced_logits_max_abs_err": float(np.abs(mine - ref).max()),
            "forced_logits_rms_err_over_std": rms / float(ref.std()), "decisive_margin": float(margin),
            "top1_gated": bool(decisive.sum() >= MIN_DECISIVE),
            "top1_agreement": float(agree[decisive].mean()) if decisive.any() else 1.0,
            "top1_agreement_all_contexts": float(agree.mean()), "top1_contexts": int(agree.size),
            "top1_decisive_contexts": int(decisive.sum()),
            "logit_scale": float(max(1.0, np.abs(ref).max(), np.abs(inp.prompt_logits).max()))}, mine


def decoder_run(ck: Checkpoint, inp: Inputs, model_bytes: bytes, cache: KvCacheEntry | None = None):
    """-> (figures, forced-decode logits (CONTEXTS*FORCED_STEPS, V)); `cache`: the variant's quantized KV cache."""
    max_context = max(len(r) for r in inp.rows + [inp.prompt + inp.greedy]) + 1
    runner = open_runner(session(model_bytes), ck, max(CONTEXTS, 2), max_context, cache)
    forced, logits = _forced_figures(runner, inp)
    return {**_prefill_figures(runner, inp), **_greedy_figures(runner, inp), **forced}, logits


def decoder_figures(ck: Checkpoint, inp: Inputs, model_bytes: bytes, precision: str,
                    cache: KvCacheEntry | None = None) -> dict:
    """The figures alone (`precision` picks the bounds at check(), not what is measured)."""
    return decoder_run(ck, inp, model_bytes, cache)[0]


def _fp32_bounds(f: dict) -> list[tuple[str, str, float]]:
    if "feature_max_abs_err" in f:
        return [("feature_max_abs_err", "max", FP32_REL * f["feature_scale"])]
    bound = FP32_REL * f["logit_scale"]
    return [(k, "max", bound) for k in ("prefill_logits_max_abs_err", "chunked_prefill_logits_max_abs_err",
                                        "forced_logits_max_abs_err")] + [("greedy_identical", "equal", True)]


def bounds(precision: str, figures: dict) -> list[tuple[str, str, float]]:
    """(figure, kind, bound) the variant must meet; recorded beside its figures in the build's JSON."""
    if precision == "fp32":
        return _fp32_bounds(figures)
    if precision == "fp16":
        return [("feature_cosine", "min", FP16_MIN_COSINE)]
    if "feature_cosine" in figures:
        return [("feature_cosine", "min", QUANT_MIN_COSINE)]
    gate = [("forced_logits_rms_err_over_std", "max", NOISE_REL[precision])]
    gate += [("top1_agreement", "min", QUANT_MIN_TOP1)] if figures["top1_gated"] else []
    return gate + (kv_parity.bounds(figures) if "kv_err_ratio_vs_fp32_cache" in figures else [])


_PASSES = {"max": lambda v, b: v <= b, "min": lambda v, b: v >= b, "equal": lambda v, b: v == b}


def failures(precision: str, figures: dict) -> list[str]:
    """Every figure past its bound, one phrase each; empty when the variant passes."""
    out = []
    for key, kind, bound in bounds(precision, figures):
        if _PASSES[kind](figures[key], bound):
            continue
        if key == "greedy_identical":
            out.append(f"greedy tokens differ after {figures['greedy_matching_prefix']} of "
                       f"{figures['greedy_tokens']}")
        else:
            out.append(f"{key} {figures[key]:.6g} {'>' if kind == 'max' else '<'} {bound:.6g}")
    return out


def check(graph: str, variant: str, precision: str, figures: dict) -> list:
    """-> the bounds met; raise ParityError naming the variant and every figure past its bound."""
    failed = failures(precision, figures)
    if failed:
        raise ParityError(f"parity gate failed for {graph} {variant}: {'; '.join(failed)}")
    return [list(b) for b in bounds(precision, figures)]
