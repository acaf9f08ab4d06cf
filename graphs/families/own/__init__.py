"""The project's own ViT + GPT-2-style family (graphs/families/own/family.py)."""

from graphs.families.own.config import PRESETS

SOURCES = tuple(sorted(PRESETS))
