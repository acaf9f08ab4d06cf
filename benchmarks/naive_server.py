"""The baseline bench_vs_naive.py measures mmserve against: the server a user writes first.

One Ray Serve deployment with a FastAPI route that speaks the same OpenAI streaming chat API, running the PyTorch
reference model (graphs/families/own/model.py, the weights the artifacts were built from) eagerly: decode the image
with PIL, resize, run the vision encoder, prefill, then one decoder call per token with its KV cache, each token
sent as its own SSE event. One request at a time (max_ongoing_requests=1: Serve's proxy queues the rest), no
batching, no graph export, no quantization. The preprocessing is the artifacts' own rule (short side + center crop),
so both servers see the same pixels and prompt lengths.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures (request: Request) at runtime.

import base64
import io
import json
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from ray import serve

naive_app = FastAPI()


@serve.deployment(max_ongoing_requests=1)
@serve.ingress(naive_app)
class NaiveServer:
    def __init__(self, artifacts: str, threads: int):
        import torch

        from graphs.families.own.family import FAMILY
        from graphs.families.own.tokenizer import load_tokenizer
        from mmcore.manifest import Manifest

        torch.set_num_threads(threads)
        manifest = Manifest.read(artifacts)
        name = manifest.source["name"]
        self.model = FAMILY.load(FAMILY.resolve(name, None, None))  # same preset, same seeded weights
        self.tok = load_tokenizer(Path(artifacts) / "tokenizer.json")
        self.size = manifest.vision.image_size
        self.eos = manifest.decoder.eos_token_ids[0]
        self.name = f"naive-{name}"

    def pixels(self, url: str):
        import numpy as np
        import torch
        from PIL import Image

        img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
        scale = self.size / min(img.size)
        img = img.resize((max(self.size, round(img.width * scale)), max(self.size, round(img.height * scale))),
                         Image.BICUBIC)
        left, top = (img.width - self.size) // 2, (img.height - self.size) // 2
        img = img.crop((left, top, left + self.size, top + self.size))
        return torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy()).unsqueeze(0)  # (1,3,S,S) uint8

    def prompt(self, messages: list[dict]):
        from graphs.families.own.tokenizer import encode_chat

        images, turns = [], []
        for m in messages:
            parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
            images += [self.pixels(p["image_url"]["url"]) for p in parts if p["type"] == "image_url"]
            turns.append((m["role"], "\n".join(p["text"] for p in parts if p["type"] == "text")))
        return images, encode_chat(self.tok, turns)

    def tokens(self, images, ids: list[int], max_tokens: int, ignore_eos: bool):
        """Greedy decoding with the reference's KV cache, one token per decoder call."""
        import torch

        m = self.model
        with torch.no_grad():
            feats = torch.cat([m.vision(p) for p in images], dim=1) if images else None  # (1,n*P,D)
            x = m.embed_prompt(feats, torch.tensor([ids]))
            pos = x.shape[1] - 1
            logits, past = m.decoder(x, torch.arange(x.shape[1]).unsqueeze(0))
            for _ in range(max_tokens):
                nxt = int(logits[0, -1].argmax())
                yield nxt
                if nxt == self.eos and not ignore_eos:
                    return
                pos += 1
                logits, past = m.decoder(m.decoder.wte(torch.tensor([[nxt]])), torch.tensor([[pos]]), past)

    @naive_app.get("/v1/models")
    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.name, "object": "model"}]}

    @naive_app.post("/v1/chat/completions")
    async def chat(self, request: Request) -> StreamingResponse:
        body = await request.json()
        images, ids = self.prompt(body["messages"])
        created, n = int(time.time()), 0

        async def events():
            nonlocal n
            for tok in self.tokens(images, ids, body.get("max_tokens", 16), body.get("ignore_eos", False)):
                n += 1
                delta = {"content": self.tok.decode([tok])}
                yield "data: " + json.dumps({"id": "naive", "object": "chat.completion.chunk", "created": created,
                                             "model": self.name, "choices": [{"index": 0, "delta": delta,
                                                                              "finish_reason": None}]}) + "\n\n"
            usage = {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n}
            yield "data: " + json.dumps({"id": "naive", "object": "chat.completion.chunk", "created": created,
                                         "model": self.name, "choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
