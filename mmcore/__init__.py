"""The bottom layer both sides stand on: the artifact contract (`manifest`), the ONNX Runtime runtime (`runtime`:
sessions, providers, profiling, warm-up, the one KV runner) and the artifact store (`store`: URIs, fetch, push).

It imports neither Ray nor torch, and neither graphs nor serve_app: the build (graphs/) writes what it defines and
serving (serve_app/) reads it, and an import-linter contract in pyproject.toml keeps every arrow pointing down here.
docs/architecture.md says why this is a package of its own.
"""
