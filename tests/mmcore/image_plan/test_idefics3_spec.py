"""The Idefics3 plan spec read from `save_pretrained` output (transformers writes the files), and the plan it gives
against the processor transformers loads back from the same directory (AutoProcessor / AutoImageProcessor)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoImageProcessor, AutoProcessor, Idefics3Processor
from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

from mmcore.image_plan.idefics3 import plan, spec_from_hf
from serve_app.imaging.decode import to_rgb
from serve_app.imaging.idefics3_views import normalize, views
from tests.idefics3_cases import TINY, hf_image_processor, sample_image, tiny_config, tiny_tokenizer


def _read(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def idefics3_dir(tmp_path_factory):
    """An Idefics3 checkpoint's processor and config files, with non-default settings (bicubic, own mean/std)."""
    d = tmp_path_factory.mktemp("idefics3")
    tokenizer = tiny_tokenizer()
    image_processor = hf_image_processor(TINY)
    image_processor.resample, image_processor.image_mean, image_processor.image_std = 3, [0.4, 0.5, 0.6], [0.2, 0.3, 0.25]
    Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=TINY.image_seq_len,
                      chat_template=DEFAULT_CHAT_TEMPLATE).save_pretrained(d)
    tiny_config(TINY, tokenizer.convert_tokens_to_ids("<image>"), len(tokenizer)).save_pretrained(d)
    return d


def test_spec_from_save_pretrained_equals_the_loaded_processor(idefics3_dir):
    files = _read(idefics3_dir / "processor_config.json")
    spec = spec_from_hf(files["image_processor"], files, _read(idefics3_dir / "config.json"))
    loaded = AutoProcessor.from_pretrained(idefics3_dir)
    assert (spec.resample, spec.image_mean, spec.image_std) == ("bicubic", (0.4, 0.5, 0.6), (0.2, 0.3, 0.25))
    assert spec.image_seq_len == loaded.image_seq_len == TINY.image_seq_len
    for height, width, mode in [(50, 70, "RGB"), (3, 5, "RGBA"), (20000, 20, "L")]:
        img = sample_image(height, width, mode)
        out = loaded.image_processor(images=[img], return_row_col_info=True)
        p = plan(spec, height, width)
        assert (p.rows, p.cols) == (out["rows"][0][0], out["cols"][0][0])
        ours = normalize(views(to_rgb(img), p), spec)
        assert np.array_equal(ours, out["pixel_values"][0])


def test_default_image_processor_class_without_torchvision(idefics3_dir):
    """AutoImageProcessor's default is the torchvision class only with torchvision >= 0.27; here it is PIL's."""
    try:
        import torchvision  # noqa: F401
        pytest.skip("torchvision is importable: the default is its backend")
    except ImportError:
        pass
    assert type(AutoImageProcessor.from_pretrained(idefics3_dir)).__name__ == "Idefics3ImageProcessorPil"


def test_smolvlm_files(tmp_path):
    """SmolVLM: the image processor writes preprocessor_config.json, the processor's image_seq_len stands apart."""
    hf_image_processor(TINY, smolvlm=True).save_pretrained(tmp_path)
    tiny_config(TINY, 5, 100, smolvlm=True).save_pretrained(tmp_path)
    config = _read(tmp_path / "config.json")
    assert config["model_type"] == "smolvlm"
    spec = spec_from_hf(_read(tmp_path / "preprocessor_config.json"), {"image_seq_len": 4}, config)
    assert spec == TINY


@pytest.mark.parametrize("change,message", [
    ({"do_convert_rgb": False}, "do_convert_rgb false"),
    ({"size": {"height": 64, "width": 64}}, "only size.longest_edge"),
    ({"resample": 7}, "resample 7"),
])
def test_unsupported_options_name_the_field(change, message):
    config = tiny_config(TINY, 5, 100).to_dict()
    with pytest.raises(ValueError, match=message):
        spec_from_hf(hf_image_processor(TINY).to_dict() | change, {"image_seq_len": 4}, config)


def test_disagreeing_files_name_both_fields():
    config = tiny_config(TINY, 5, 100).to_dict()
    with pytest.raises(ValueError, match="image_seq_len 9 != the connector's rows per view"):
        spec_from_hf(hf_image_processor(TINY).to_dict(), {"image_seq_len": 9}, config)
    with pytest.raises(ValueError, match="model_type 'llava'"):
        spec_from_hf({}, {}, config | {"model_type": "llava"})
