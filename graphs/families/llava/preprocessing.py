"""The image processor's base-view resize and crop as the manifest's serving preprocess spec, refusing what the
preprocess stage cannot reproduce; light (no torch), so serving's checkpoint check runs it too."""

from __future__ import annotations

from graphs.families.base import SourceError
from graphs.families.llava.checkpoint import Checkpoint
from mmcore.manifest import Preprocessing

PREPROCESSOR_FILE = "preprocessor_config.json"
RESAMPLE = ("bicubic", "bilinear", "nearest")  # what the preprocess stage implements (PIL filters)


def preprocessing(ck: Checkpoint) -> Preprocessing:
    """The image processor's resize and crop as the serving preprocess spec; SourceError for what it cannot do."""
    p, side, where = ck.preprocess, ck.vision.image_size, ck.directory / PREPROCESSOR_FILE
    if p.resample not in RESAMPLE:
        raise SourceError(f"{where}: resample: {p.resample} is not supported (supported: {', '.join(RESAMPLE)})")
    if abs(p.rescale_factor * 255 - 1) > 1e-6:
        raise SourceError(f"{where}: rescale_factor: {p.rescale_factor} is not supported (only 1/255)")
    crop = p.crop
    if crop is not None and tuple(crop) != (side, side):
        raise SourceError(f"{where}: crop_size: {crop} differs from the vision tower's image_size {side}")
    common = dict(resample=p.resample, mean=p.mean, std=p.std)
    if p.resize == "shortest_edge":
        if crop is None:
            raise SourceError(f"{where}: do_center_crop: a shortest_edge resize needs a center crop to {side}")
        if p.size < side:
            raise SourceError(f"{where}: size.shortest_edge: {p.size} is smaller than the crop {side}")
        return Preprocessing(resize="shortest_edge", shortest_edge=p.size, **common)
    if p.resize == "height_width" and tuple(p.size) == (side, side):
        return Preprocessing(resize="resize", **common)
    raise SourceError(f"{where}: size: {p.size} does not resize to the vision tower's {side}x{side}")
