"""SmolVLM / Idefics3 checkpoints served over real Ray Serve + HTTP: tiny random SigLIP + Llama-style decoders
(Idefics3's pixel shuffle by 2, and SmolVLM's model type with a shuffle by 4), written by transformers'
save_pretrained with their processor, built with `mmserve build --hf` and deployed beside the package's app. Each
image is planned at its own size (crops of the longest-edge-resized image + a global view, each view's rows wrapped in
its row/column tokens). Greedy answers and prompt lengths equal transformers' own Idefics3Processor + generate()."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import serve_checkpoints
from tests.e2e.image_chats import CASES, check_chat, greedy, pil_images

pytest.importorskip("transformers")
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def idefics3(served, tmp_path_factory):
    """idefics3(spec name) -> (checkpoint dir, artifact dir, base URL); built and deployed on first use."""
    from graphs.families.idefics3.synthetic import SPECS, write_checkpoint

    yield from serve_checkpoints(served, tmp_path_factory, lambda name, d: write_checkpoint(d, SPECS[name]))


def _reference(ck, artifacts, messages: list[dict], images: list[str]) -> tuple[str, str, int, int]:
    """transformers on the checkpoint itself: its processor (images as one conversation's) and generate() in fp32."""
    import torch
    from transformers import AutoModelForImageTextToText, Idefics3Processor

    from mmcore.manifest import Manifest

    processor = Idefics3Processor.from_pretrained(ck)
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    pil = pil_images(images)
    inputs = processor(text=text, images=[pil] if pil else None, return_tensors="pt")
    model = AutoModelForImageTextToText.from_pretrained(ck, torch_dtype=torch.float32,
                                                        attn_implementation="eager").eval()
    return greedy(model, processor, inputs, Manifest.read(artifacts).decoder.eos_token_ids)


# tiny (a shuffle by 2) fills up to 272 rows an image of its 512 positions: one image a request; tiny-smolvlm all
PAIRS = [("tiny", c) for c in ("tall", "wide", "square", "text-only")] + [("tiny-smolvlm", c) for c in CASES]


@pytest.mark.parametrize("spec,case", PAIRS)
def test_greedy_equals_transformers_generate(served, idefics3, spec, case):
    ck, artifacts, url = idefics3(spec)
    check_chat(served, url, case, lambda messages, images: _reference(ck, artifacts, messages, images))
