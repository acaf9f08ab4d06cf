"""Chat messages -> prompt segments, from the manifest's prompt spec alone (no family's code).

    messages --chat template (jinja2, rendered the way transformers renders `chat_template`)--> text
      --split at each image placeholder--> text, image, text, ... --tokenize each text--> segments

The placeholder is split out as text, never looked up in the vocabulary, so a family need not reserve a token
for it; each one expands to `image_features` feature rows once the vision stage has encoded that image. Text is
tokenized without adding special tokens: the template writes every special token itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from graphs.manifest import PromptSpec
from serve_app.api.errors import InvalidRequest
from serve_app.api.protocol import ChatMessage, ImagePart, TextPart


@dataclass(frozen=True)
class ImageSlot:
    index: int  # which image of the request, in message order


PromptPiece = list[int] | ImageSlot  # token ids, or where an image's features go


def _raise(message: str):  # templates call raise_exception(...) on bad conversations, as in transformers
    raise TemplateError(message)


@lru_cache(maxsize=8)
def _compile(template: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    return env.from_string(template)


def template_messages(messages: list[ChatMessage]) -> list[dict]:
    """OpenAI messages in the shape chat templates expect: content a string, or parts {type: text|image}."""
    out = []
    for m in messages:
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
            continue
        parts = [{"type": "text", "text": p.text} if isinstance(p, TextPart) else {"type": "image"}
                 for p in m.content if isinstance(p, (TextPart, ImagePart))]
        out.append({"role": m.role, "content": parts})
    return out


class PromptRenderer:
    """Lifecycle: built once per ingress replica from the manifest's PromptSpec -> segments(messages) per request."""

    def __init__(self, spec: PromptSpec, tokenizer: Tokenizer):
        self.spec = spec
        self.tokenizer = tokenizer
        self.template = _compile(spec.chat_template)

    def render(self, messages: list[ChatMessage]) -> str:
        try:
            return self.template.render(messages=template_messages(messages), add_generation_prompt=True,
                                        bos_token=self.spec.bos_token, eos_token=self.spec.eos_token)
        except TemplateError as e:
            raise InvalidRequest(f"messages: {e}", "messages", "invalid_messages") from None

    def pieces(self, messages: list[ChatMessage], n_images: int) -> list[PromptPiece]:
        """Token ids and image slots in prompt order; the template must place every image exactly once."""
        for i, m in enumerate(messages):
            if self.spec.image_token in m.text():
                raise InvalidRequest(f"message text contains the image placeholder {self.spec.image_token!r}",
                                     f"messages.{i}.content", "invalid_value")
        texts = self.render(messages).split(self.spec.image_token)
        if len(texts) - 1 != n_images:  # a template that drops or repeats images: a bad artifact, not bad input
            raise RuntimeError(f"chat template placed {len(texts) - 1} images for {n_images} in the request")
        # encode_batch, not encode per text: the same ids, but it lets go of the GIL while it works, so a long
        # prompt tokenized on the ingress's worker thread does not hold the event loop (encode held it throughout)
        encodings = iter(self.tokenizer.encode_batch([t for t in texts if t], add_special_tokens=False))
        pieces: list[PromptPiece] = []
        for i, text in enumerate(texts):
            if i:
                pieces.append(ImageSlot(i - 1))
            if text:
                pieces.append(next(encodings).ids)
        return pieces

    def length(self, pieces: list[PromptPiece]) -> int:
        """Positions the prompt takes: tokens plus `image_features` per image."""
        return sum(self.spec.image_features if isinstance(p, ImageSlot) else len(p) for p in pieces)
