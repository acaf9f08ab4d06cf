"""Request fields this server does not implement are refused by name, never silently ignored.

A client that sends `response_format`, `tools` or `n: 4` expects them to act; answering without them would
look like success. So before validation, the parsed body is walked along the request's shape (top level, messages,
their content parts, image_url, stream_options) and the first key no wire type declares is a 400
`unsupported_parameter` whose `param` is its path, e.g. `messages.0.content.1.image_url.foo`.

A few OpenAI fields are taken with the one value that asks for nothing (`n: 1`, `detail: "auto"`): clients such as
LangChain send them explicitly, and the server does exactly that anyway. Any other
value of them is refused the same way. Shapes the walk does not expect (content not a list, a part of an unknown type)
are left to the pydantic models, which name the field.
"""

from __future__ import annotations

from pydantic import BaseModel

from serve_app.api.errors import InvalidRequest
from serve_app.api.protocol import ChatCompletionRequest, ChatMessage, ImagePart, ImageURL, StreamOptions, TextPart

# field -> the value that asks for nothing; fields the wire types do not declare are dropped when they carry it.
TOP_LEVEL_NEUTRAL = {"n": 1}
IMAGE_URL_NEUTRAL = {"detail": "auto"}
PARTS: dict[str, type[BaseModel]] = {"text": TextPart, "image_url": ImagePart}


class UnsupportedParameter(InvalidRequest):
    def __init__(self, param: str, message: str | None = None, code: str | None = "unsupported_parameter"):
        super().__init__(message or f"{param}: this server does not support the parameter "
                                    f"{param.rsplit('.', 1)[-1]!r}", param, code)


def _is_neutral(value, neutral) -> bool:
    # null asks for nothing too; bool is an int in Python: `logprobs: 0` or `n: true` are not the neutral value
    return value is None or (value == neutral and isinstance(value, bool) == isinstance(neutral, bool))


def _check(obj: dict, model: type[BaseModel], where: str, neutral: dict | None = None) -> dict:
    """`obj` with every key `model` declares; neutral-valued undeclared keys dropped; anything else refused."""
    neutral = neutral or {}
    kept = {}
    for key, value in obj.items():
        param = f"{where}{key}"
        if key in neutral and not _is_neutral(value, neutral[key]):
            raise UnsupportedParameter(param, f"{param}: this server supports only {key}={neutral[key]!r}, "
                                              f"not {value!r}")
        if key in model.model_fields:
            kept[key] = value
        elif key not in neutral:
            raise UnsupportedParameter(param)
    return kept


def _check_part(part, where: str):
    kind = part.get("type") if isinstance(part, dict) else None
    model = PARTS.get(kind) if isinstance(kind, str) else None
    if model is None:
        return part  # not an object, or an unknown type: the discriminated union names it
    part = _check(part, model, where)
    if model is ImagePart and isinstance(part.get("image_url"), dict):
        part["image_url"] = _check(part["image_url"], ImageURL, f"{where}image_url.", IMAGE_URL_NEUTRAL)
    return part


def _check_message(msg, where: str):
    if not isinstance(msg, dict):
        return msg
    msg = _check(msg, ChatMessage, where)
    if isinstance(msg.get("content"), list):
        msg["content"] = [_check_part(p, f"{where}content.{j}.") for j, p in enumerate(msg["content"])]
    return msg


def refuse_unsupported(data: dict) -> dict:
    """The body with every field this server implements; raises UnsupportedParameter on the first it does not."""
    data = _check(data, ChatCompletionRequest, "", TOP_LEVEL_NEUTRAL)
    if isinstance(data.get("messages"), list):
        data["messages"] = [_check_message(m, f"messages.{i}.") for i, m in enumerate(data["messages"])]
    if isinstance(data.get("stream_options"), dict):
        data["stream_options"] = _check(data["stream_options"], StreamOptions, "stream_options.")
    return data
