"""Per-image plans: the views an image becomes and the prompt rows its features fill (one module per kind)."""

from mmcore.image_plan.anyres import AnyresPlan, AnyresPlanSpec, assemble, plan

__all__ = ["AnyresPlan", "AnyresPlanSpec", "assemble", "plan"]
