"""`python -m serve_app [--config configs/local.yaml]`: what `serve run CONFIG` does, in this process, plus a wait for
readiness and a printout of how to call the service (curl and the openai client). Ctrl-C (or SIGTERM) stops it:
Serve drains, then Ray shuts down with nothing left behind (serve_app.lifecycle says why not `serve run` itself).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from serve_app import lifecycle

# serve_app/configs links to the checkout's configs/ and is package data in a wheel: found in both
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "local.yaml"


def usage(base: str, model: str, key: str | None) -> str:
    auth = f" -H 'Authorization: Bearer {key}'" if key else ""
    api_key = repr(key) if key else '"unused"'
    return f"""
mmserve is ready at {base}   (model: {model})

  curl -N {base}/v1/chat/completions -H 'Content-Type: application/json'{auth} -d '{{
    "model": "{model}", "stream": true, "max_tokens": 32,
    "messages": [{{"role": "user", "content": [
      {{"type": "image_url", "image_url": {{"url": "data:image/png;base64,'"$(base64 -w0 examples/shapes.png)"'"}}}},
      {{"type": "text", "text": "Describe the image."}}]}}]}}'

  python - <<'PY'
from openai import OpenAI
client = OpenAI(base_url="{base}/v1", api_key={api_key})
for chunk in client.chat.completions.create(model="{model}", stream=True, max_tokens=32,
                                            messages=[{{"role": "user", "content": "Hello!"}}]):
    print(chunk.choices[0].delta.content or "", end="", flush=True) if chunk.choices else None
print()
PY

Liveness {base}/health, readiness {base}/ready. Ctrl-C stops the service.
"""


def served_model(config: dict) -> tuple[str, int]:
    app = config["applications"][0]
    model = (app.get("args") or {}).get("model") or {}
    default = Path(model["checkpoint"]).name if model.get("checkpoint") else model.get("preset", "demo")
    name = model.get("served_name") or f"mmserve-{default}"
    return name, int((config.get("http_options") or {}).get("port", 8000))


def build_first(config: dict) -> None:
    """Build the served preset here, before Ray starts, so its progress lines show on this console; the replicas
    then find it in this machine's cache (each replica resolves its model itself: serve_app/artifacts.py)."""
    from serve_app.artifacts import ModelSource, resolve_model

    model = ((config["applications"][0].get("args") or {}).get("model")) or {}
    if not model.get("artifacts_uri"):  # a URI is fetched by each replica on its node, never here
        resolve_model(ModelSource.model_validate(model))


def wait_ready(stopper: lifecycle.Stopper, url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stopper.event.is_set():
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        stopper.wait(1.0)
    return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serve_app", description=__doc__)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="Serve config file (default: configs/local.yaml)")
    p.add_argument("--ready-timeout-s", type=float, default=1800, help="first start builds the model: be patient")
    args = p.parse_args(argv)
    raw = yaml.safe_load(Path(args.config).read_text())
    model, port = served_model(raw)
    config = lifecycle.load_config(args.config)  # a bad config file fails before the (long) first build
    build_first(raw)
    stopper = lifecycle.Stopper()
    try:
        lifecycle.start(config, stopper)
        base = f"http://127.0.0.1:{port}"
        if wait_ready(stopper, f"{base}/ready", args.ready_timeout_s):
            keys = [k for k in os.environ.get("MMSERVE_API_KEYS", "").split(",") if k.strip()]
            print(usage(base, model, keys[0].strip() if keys else None), flush=True)
        elif not stopper.event.is_set():
            print(f"mmserve: {base}/ready not ready after {args.ready_timeout_s:.0f}s; stopping", flush=True)
            return 1
        stopper.wait()
        return 0
    finally:
        print(f"mmserve: stopped ({lifecycle.stop()})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
