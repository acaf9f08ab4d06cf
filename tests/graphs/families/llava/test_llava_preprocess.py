"""The serving preprocess stage, driven by the manifest spec a LLaVA build writes, reproduces the checkpoint's own
image processor (transformers' CLIPImageProcessor / SiglipImageProcessor from the saved config) on the same image;
and processor options it cannot reproduce are refused at build time."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from graphs.build import BuildError, build_artifacts
from graphs.families.llava.checkpoint import read_checkpoint
from graphs.families.llava.family import preprocessing
from mmcore.manifest import VisionSpec
from serve_app.imaging.resize import to_pixels

SIZES = [(50, 40), (40, 50), (33, 97), (32, 32), (301, 17)]


def _image(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", ["clip_llama", "siglip_qwen2"])
def test_pixels_equal_the_checkpoints_image_processor(request, name):
    from transformers import AutoImageProcessor

    ck_dir = request.getfixturevalue(name)
    ck = read_checkpoint(ck_dir)
    pre = preprocessing(ck)
    assert pre.resize == ("shortest_edge" if name == "clip_llama" else "resize")
    vision = VisionSpec(image_size=ck.vision.image_size, patch_size=ck.vision.patch_size,
                        features_per_image=ck.vision.features_per_image, feature_dim=ck.text.hidden,
                        preprocessing=pre)
    hf = AutoImageProcessor.from_pretrained(ck_dir)
    mean, std = np.array(pre.mean, np.float32)[:, None, None], np.array(pre.std, np.float32)[:, None, None]
    for i, (w, h) in enumerate(SIZES):
        img = _image(w, h, i)
        want = hf(images=img, return_tensors="np")["pixel_values"][0]  # (3,S,S) float32, normalized
        px = to_pixels(img, vision)  # (3,S,S) uint8
        got = (px.astype(np.float32) * np.float32(1 / 255) - mean) / std
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{w}x{h}")


def test_crop_other_than_the_towers_size_is_refused(clip_llama, copy_of, tmp_path):
    ck = copy_of(clip_llama)
    path = ck / "preprocessor_config.json"
    data = json.loads(path.read_text())
    data["crop_size"] = {"height": 24, "width": 24}
    path.write_text(json.dumps(data))
    out = tmp_path / "out"
    with pytest.raises(BuildError, match=r"preprocessor_config.json: crop_size: .* image_size 32$"):
        build_artifacts(ck, out)
    assert not out.exists()
