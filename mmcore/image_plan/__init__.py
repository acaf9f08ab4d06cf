"""Per-image plans: the views an image becomes and the prompt rows its features fill (one module per kind)."""
