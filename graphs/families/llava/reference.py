"""The reference the parity gate measures against: transformers' own `LlavaForConditionalGeneration`, loaded from
the same checkpoint directory with `from_pretrained` (eager attention, float32). Nothing here re-implements the
model; the only computation of ours is the pixel normalization a processor would do (rescale, mean/std), applied to
the same already-resized uint8 pixels the graph receives.

Build-time only: imports torch and transformers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from graphs.families.llava.checkpoint import Checkpoint


class Reference:
    MODEL = "LlavaForConditionalGeneration"  # the transformers class; the anyres family's subclass names its own

    def __init__(self, ck: Checkpoint):
        import torch
        import transformers
        from transformers import GenerationConfig

        self.torch, self.ck = torch, ck
        self.model = getattr(transformers, self.MODEL).from_pretrained(
            Path(ck.directory), dtype=torch.float32, attn_implementation="eager").eval()
        # The gate measures the graphs, not the checkpoint's sampling defaults: generate() would otherwise apply its
        # generation_config (a repetition_penalty, say) to the reference's greedy tokens and not to the graph's.
        self.model.generation_config = GenerationConfig()

    def pixel_values(self, pixels: np.ndarray):
        """uint8 (B,3,H,W) -> the float pixel_values the image processor would produce from them."""
        pre = self.ck.preprocess
        x = pixels.astype(np.float32) * np.float32(pre.rescale_factor)
        mean = np.asarray(pre.mean, np.float32)[None, :, None, None]
        std = np.asarray(pre.std, np.float32)[None, :, None, None]
        return self.torch.from_numpy((x - mean) / std)

    def image_features(self, pixels: np.ndarray) -> np.ndarray:
        """(B,3,H,W) uint8 -> (B,P,Dt) projected features, from get_image_features."""
        with self.torch.no_grad():
            out = self.model.get_image_features(pixel_values=self.pixel_values(pixels))
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        return np.stack([f.numpy() for f in feats])

    def image_inputs(self, pixels: np.ndarray | None) -> dict:
        """The model's keyword inputs for pixels (1,3,H,W) uint8, or none for text only."""
        return {} if pixels is None else {"pixel_values": self.pixel_values(pixels)}

    def prompt_features(self, pixels: np.ndarray) -> np.ndarray:
        """(T,Dt): the rows the placeholders of the one image in pixels (1,3,H,W) take in the prompt, in order."""
        return self.image_features(pixels)[0]

    def logits(self, ids: list[int], pixels: np.ndarray | None) -> np.ndarray:
        """One forward over the whole sequence (image placeholders expanded in ids) -> logits (S,V)."""
        kwargs = self.image_inputs(pixels)
        with self.torch.no_grad():
            out = self.model(input_ids=self.torch.tensor([ids]), **kwargs)
        return out.logits[0].numpy()

    def greedy(self, ids: list[int], pixels: np.ndarray | None, steps: int) -> list[int]:
        """`steps` greedy tokens after ids (image placeholders expanded), via transformers' generate with no stop."""
        return self._generate(ids, pixels, steps, cache=False)

    def greedy_cache(self, ids: list[int], pixels: np.ndarray | None, steps: int):
        """The same, and transformers' cache after it -> (tokens, per layer (K, V) (1,kvh,T,hs) float32): K after
        rotary, as the model's attention caches it; T = len(ids) + steps - 1 (the last token is not fed back)."""
        return self._generate(ids, pixels, steps, cache=True)

    def kv(self, ids: list[int], pixels: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """One forward over ids -> per layer (K, V) (1,kvh,S,hs) as transformers caches them (K after rotary)."""
        kwargs = self.image_inputs(pixels)
        with self.torch.no_grad():
            out = self.model(input_ids=self.torch.tensor([ids]), use_cache=True, **kwargs)
        return _layers(out.past_key_values)

    def _generate(self, ids, pixels, steps: int, cache: bool):
        kwargs = self.image_inputs(pixels)
        with self.torch.no_grad():
            out = self.model.generate(input_ids=self.torch.tensor([ids]),
                                      attention_mask=self.torch.ones(1, len(ids), dtype=self.torch.long),
                                      do_sample=False, max_new_tokens=steps, min_new_tokens=steps,
                                      eos_token_id=None, pad_token_id=0, return_dict_in_generate=True, **kwargs)
        tokens = out.sequences[0, len(ids):].tolist()
        return (tokens, _layers(out.past_key_values)) if cache else tokens

    def token_embeddings(self) -> np.ndarray:
        return self.model.get_input_embeddings().weight.detach().float().numpy()  # (V,Dt)


def _layers(cache) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(layer.keys.float().numpy(), layer.values.float().numpy()) for layer in cache.layers]
