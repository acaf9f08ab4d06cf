"""The one error path: any exception -> (HTTP status, OpenAI ErrorResponse).

Stages raise `APIError` subclasses for what the client got wrong; they cross Ray's process boundary wrapped in a
`RayTaskError`, which `unwrap` peels off, so a bad image found in the preprocess replica still reaches the client as
a 400 naming the field. Anything unexpected is a 500 whose message does not leak internals beyond the exception type.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from serve_app.protocol import ErrorInfo, ErrorResponse
from serve_app.stages.messages import Overloaded

log = logging.getLogger("ray.serve")


class APIError(Exception):
    """An error the client can act on. `param` names the request field, `code` is a stable machine-readable tag."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code

    def __reduce__(self):  # keep param and code when Ray pickles the error across processes
        return (type(self), (self.message, self.param, self.code))


class InvalidRequest(APIError):
    pass


class InvalidImage(APIError):
    """Not an image, truncated, unsupported format, or over a size limit."""


class ContextLengthExceeded(APIError):
    def __init__(self, message: str, param: str | None = "messages", code: str | None = "context_length_exceeded"):
        super().__init__(message, param, code)


class Unauthorized(APIError):
    status = 401
    type = "authentication_error"

    def __init__(self, message: str = "missing or invalid API key", param: str | None = None,
                 code: str | None = "invalid_api_key"):
        super().__init__(message, param, code)


class NotFound(APIError):
    status = 404
    type = "not_found_error"


def unwrap(exc: BaseException) -> BaseException:
    """The original exception behind Ray's wrappers (RayTaskError and friends keep it as `.cause`)."""
    seen = 0
    while getattr(exc, "cause", None) is not None and seen < 8:
        exc = exc.cause
        seen += 1
    return exc


def validation_param(err: ValidationError) -> str | None:
    """`messages.0.content` style path of the first failing field."""
    errors = err.errors()
    if not errors:
        return None
    return ".".join(str(p) for p in errors[0]["loc"]) or None


def validation_message(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def to_error(exc: BaseException) -> tuple[int, ErrorResponse, dict[str, str]]:
    """(status, body, extra headers) for any exception."""
    exc = unwrap(exc)
    if isinstance(exc, APIError):
        info = ErrorInfo(message=exc.message, type=exc.type, param=exc.param, code=exc.code)
        return exc.status, ErrorResponse(error=info), {}
    if isinstance(exc, ValidationError):
        info = ErrorInfo(message=validation_message(exc), type="invalid_request_error",
                         param=validation_param(exc), code="invalid_value")
        return 400, ErrorResponse(error=info), {}
    if isinstance(exc, Overloaded):
        info = ErrorInfo(message=str(exc), type="server_overloaded", code="overloaded")
        return 503, ErrorResponse(error=info), {"Retry-After": str(max(1, round(exc.retry_after_s)))}
    log.exception("internal error", exc_info=exc)
    info = ErrorInfo(message=f"internal error ({type(exc).__name__})", type="internal_error", code="internal_error")
    return 500, ErrorResponse(error=info), {}
