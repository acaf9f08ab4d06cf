"""Chat messages -> prompt segments, from the manifest's prompt spec alone (no family's code), with the ids
transformers' processor gives (`ProcessorMixin.apply_chat_template(..., tokenize=True)`):

    messages --chat template (compiled as transformers compiles it: mmcore/chat_template.py)--> text
      --tokenize the whole text once, the placeholder a special token; BOS as transformers adds it--> ids
      --split at each placeholder--> ids, image, ids, ...

The whole text is tokenized at once because tokenizing the pieces between placeholders apart changes ids (a Metaspace
`prepend_scheme="first"` tokenizer gives the piece after an image a "▁" transformers never produces). BOS: transformers
tokenizes the rendered chat with `add_special_tokens=True` unless the text already starts with the BOS token (a
template that writes `{{ bos_token }}`), so the tokenizer's own post-processor adds it exactly when transformers does.
Each placeholder expands to `image_features` feature rows once the vision stage has encoded that image.
"""

from __future__ import annotations

from dataclasses import dataclass
from jinja2.exceptions import TemplateError
from tokenizers import AddedToken, Tokenizer

from mmcore.manifest import PromptSpec
from mmcore.chat_template import compile_chat_template
from serve_app.api.errors import InvalidRequest
from serve_app.api.protocol import ChatMessage, ImagePart, TextPart


@dataclass(frozen=True)
class ImageSlot:
    index: int  # which image of the request, in message order


PromptPiece = list[int] | ImageSlot  # token ids, or where an image's features go


def with_placeholder_token(tokenizer: Tokenizer, placeholder: str) -> tuple[Tokenizer, int]:
    """A copy of the tokenizer in which the image placeholder is one special token, and its id: a family need not
    reserve a token for it, and whole-text tokenization then splits text at it as transformers' does."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.add_special_tokens([AddedToken(placeholder, special=True, normalized=False)])
    return copy, copy.token_to_id(placeholder)


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
        self.tokenizer, self.image_id = with_placeholder_token(tokenizer, spec.image_token)
        self.template = compile_chat_template(spec.chat_template)

    def render(self, messages: list[ChatMessage]) -> str:
        try:
            return self.template.render(messages=template_messages(messages), add_generation_prompt=True,
                                        bos_token=self.spec.bos_token, eos_token=self.spec.eos_token)
        except TemplateError as e:
            raise InvalidRequest(f"messages: {e}", "messages", "invalid_messages") from None

    def pieces(self, messages: list[ChatMessage], n_images: int) -> list[PromptPiece]:
        """Token ids and image slots in prompt order; the template must place every image exactly once."""
        for i, m in enumerate(messages):  # parts joined as a template joins them: "<ima" + "ge>" is a placeholder too
            joined = m.content if isinstance(m.content, str) else "".join(
                p.text for p in m.content if isinstance(p, TextPart))
            if self.spec.image_token in joined or self.spec.image_token in m.text():
                raise InvalidRequest(f"message text contains the image placeholder {self.spec.image_token!r}",
                                     f"messages.{i}.content", "invalid_value")
        text = self.render(messages)
        bos = self.spec.bos_token
        # encode_batch of one, not encode: the same ids, but it lets go of the GIL while it works, so a long prompt
        # tokenized on the ingress's worker thread does not hold the event loop (encode holds it throughout)
        ids = self.tokenizer.encode_batch([text], add_special_tokens=not (bos and text.startswith(bos)))[0].ids
        pieces: list[PromptPiece] = []
        start = 0
        for k, token in enumerate(ids):
            if token == self.image_id:
                if k > start:
                    pieces.append(ids[start:k])
                pieces.append(ImageSlot(sum(isinstance(p, ImageSlot) for p in pieces)))
                start = k + 1
        if start < len(ids):
            pieces.append(ids[start:])
        placed = sum(isinstance(p, ImageSlot) for p in pieces)
        if placed > n_images:  # the client's text, e.g. a system message or text the template adds to, made one
            raise InvalidRequest(f"the rendered prompt holds {placed} image placeholders {self.spec.image_token!r} "
                                 f"for {n_images} images: message text must not write the placeholder",
                                 "messages", "invalid_value")
        if placed < n_images:  # a template that drops images: a bad artifact, not bad input
            raise RuntimeError(f"chat template placed {placed} images for {n_images} in the request")
        return pieces

    def length(self, pieces: list[PromptPiece]) -> int:
        """Positions the prompt takes: tokens plus `image_features` per image."""
        return sum(self.spec.image_features if isinstance(p, ImageSlot) else len(p) for p in pieces)
