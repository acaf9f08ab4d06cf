"""Chat messages -> prompt segments, from the manifest's prompt spec alone (no family's code), with the ids
transformers' processor gives (`ProcessorMixin.apply_chat_template(..., tokenize=True)`):

    messages --chat template (compiled as transformers compiles it: mmcore/chat_template.py)--> text
      --tokenize the whole text once, the placeholder a special token; BOS as transformers adds it--> ids
      --split at each placeholder--> ids, image, ids, ...

The whole text is tokenized at once because tokenizing the pieces between placeholders apart changes ids (a Metaspace
`prepend_scheme="first"` tokenizer gives the piece after an image a "▁" transformers never produces). BOS: transformers
tokenizes the rendered chat with `add_special_tokens=True` unless the text already starts with the BOS token (a
template that writes `{{ bos_token }}`), so the tokenizer's own post-processor adds it exactly when transformers does.
Each placeholder expands to `image_features` feature rows once the vision stage has encoded that image; or, for an
image whose layout (from its plan, once preprocessed) writes text of its own, the rendered text is tokenized again
with each placeholder replaced by that layout (`expand_placeholders`), as transformers' processor expands it.
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


@dataclass(frozen=True)
class FeatureSlot:
    """A run of one image's feature rows, where its layout puts text between runs (e.g. a crop's row and column
    tokens before each view's rows)."""
    index: int  # which image of the request, in message order
    start: int  # its first row in the image's block
    rows: int


PromptPiece = list[int] | ImageSlot | FeatureSlot  # token ids, or where an image's features go
Layout = tuple[str | int, ...]  # an image's placeholder expanded: text, and runs of feature rows (contract's layout)


def expand_placeholders(text: str, placeholder: str, layouts: list[Layout]) -> tuple[str, list[FeatureSlot]]:
    """`text` with its i-th placeholder replaced by image i's layout, each run of rows written as ONE placeholder,
    and the runs in text order. Why the whole text again and not its pieces: the text a layout adds merges with its
    neighbours in tokenization as transformers' processor, which expands the placeholder in the text, gets it
    (a layout's trailing newline and the next one's leading one are one token in a byte-level BPE)."""
    parts = text.split(placeholder)
    if len(parts) != len(layouts) + 1:
        raise RuntimeError(f"{len(parts) - 1} image placeholders in the rendered prompt for {len(layouts)} images")
    out, slots = [parts[0]], []
    for i, (layout, after) in enumerate(zip(layouts, parts[1:])):
        start = 0
        for item in layout:
            if isinstance(item, str):
                out.append(item)
            else:
                out.append(placeholder)
                slots.append(FeatureSlot(i, start, item))
                start += item
        out.append(after)
    return "".join(out), slots


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

    def pieces(self, messages: list[ChatMessage], n_images: int,
               layouts: list[Layout] | None = None) -> list[PromptPiece]:
        """Token ids and image slots in prompt order; the template must place every image exactly once. With
        `layouts` (each image's, from its plan, once preprocessed), each placeholder is expanded into its layout
        before tokenizing and the runs of rows are FeatureSlots."""
        for i, m in enumerate(messages):  # parts joined as a template joins them: "<ima" + "ge>" is a placeholder too
            joined = m.content if isinstance(m.content, str) else "".join(
                p.text for p in m.content if isinstance(p, TextPart))
            if self.spec.image_token in joined or self.spec.image_token in m.text():
                raise InvalidRequest(f"message text contains the image placeholder {self.spec.image_token!r}",
                                     f"messages.{i}.content", "invalid_value")
        text = self.render(messages)
        bos = self.spec.bos_token
        runs: list[FeatureSlot] | None = None
        if layouts is not None:
            text, runs = expand_placeholders(text, self.spec.image_token, layouts)
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
        if runs is not None:  # every placeholder is a run of the expanded layouts, in order
            if sum(isinstance(p, ImageSlot) for p in pieces) != len(runs):  # prepare() let no stray one through
                raise RuntimeError(f"the expanded prompt holds {len(runs)} runs of image rows and other placeholders")
            slots = iter(runs)
            return [next(slots) if isinstance(p, ImageSlot) else p for p in pieces]
        placed = sum(isinstance(p, ImageSlot) for p in pieces)
        if placed > n_images:  # the client's text, e.g. a system message or text the template adds to, made one
            raise InvalidRequest(f"the rendered prompt holds {placed} image placeholders {self.spec.image_token!r} "
                                 f"for {n_images} images: message text must not write the placeholder",
                                 "messages", "invalid_value")
        if placed < n_images:  # a template that drops images: a bad artifact, not bad input
            raise RuntimeError(f"chat template placed {placed} images for {n_images} in the request")
        return pieces

    def length(self, pieces: list[PromptPiece]) -> int:
        """Positions the prompt takes: tokens, `image_features` per image slot, and each run's rows."""
        return sum(self.spec.image_features if isinstance(p, ImageSlot) else p.rows if isinstance(p, FeatureSlot)
                   else len(p) for p in pieces)
