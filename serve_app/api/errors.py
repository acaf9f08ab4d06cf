"""The one error path: any exception -> (HTTP status, OpenAI ErrorResponse).

Stages raise `APIError` subclasses (serve_app/contract.py) for what the client got wrong; they cross Ray's process
boundary wrapped in a `RayTaskError`, which `unwrap` peels off, so a bad image found in the preprocess replica still
reaches the client as a 400 naming the field. The status comes from serve_app/outcomes.py, which the stages' metrics
count by too. Anything unexpected is a 500 whose message does not leak internals beyond the exception type.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from serve_app.api.protocol import ErrorInfo, ErrorResponse
from serve_app.contract import APIError, unwrap
from serve_app.outcomes import Outcome, outcome_of, status_of  # noqa: F401 -- status_of: the one classification

log = logging.getLogger("ray.serve")


class InvalidRequest(APIError):
    pass


class ContextLengthExceeded(APIError):
    def __init__(self, message: str, param: str | None = "messages", code: str | None = "context_length_exceeded"):
        super().__init__(message, param, code)


class RequestTooLarge(APIError):
    """413: the body is over the ingress's byte limit (declared by Content-Length, or counted as it arrived)."""

    status = 413

    def __init__(self, declared: int | None, limit: int, param: str | None = None,
                 code: str | None = "request_too_large"):
        size = f"{declared} bytes" if declared is not None else f"more than {limit} bytes"
        super().__init__(f"request body is {size}; the limit is {limit} bytes", param, code)
        self.declared, self.limit = declared, limit

    def __reduce__(self):
        return (type(self), (self.declared, self.limit, self.param, self.code))


class StageUnavailable(APIError):
    """503: a stage has no running replica (its node lost, or restarting); requests that need it fail fast."""

    status = 503
    type = "service_unavailable"
    retry_after_s = 5.0

    def __init__(self, stage: str, param: str | None = None, code: str | None = None):
        super().__init__(f"the {stage} stage is unavailable (no running replica); requests without images are "
                         f"still served", param, code or f"{stage}_unavailable")
        self.stage = stage

    def __reduce__(self):
        return (type(self), (self.stage, self.param, self.code))


class DecoderTimeout(APIError):
    """504: the decoder sent no chunk for `timeout_s` (before the first token or between two chunks); the ingress
    has cancelled its call, so the stalled request frees its slot or leaves the queue."""

    status = 504
    type = "timeout"

    def __init__(self, timeout_s: float, param: str | None = None, code: str | None = "decoder_timeout"):
        super().__init__(f"the decoder sent nothing for {timeout_s:g} s (ingress.decoder_timeout_s); the request "
                         f"was cancelled", param, code)
        self.timeout_s = timeout_s

    def __reduce__(self):
        return (type(self), (self.timeout_s, self.param, self.code))


class Unauthorized(APIError):
    status = 401
    type = "authentication_error"

    def __init__(self, message: str = "missing or invalid API key", param: str | None = None,
                 code: str | None = "invalid_api_key"):
        super().__init__(message, param, code)


class NotFound(APIError):
    status = 404
    type = "not_found_error"


def _first_error(err: ValidationError) -> dict | None:
    """The error to report: an unknown field first (it is refused by name, wherever it sits), else the first."""
    errors = err.errors()
    return next((e for e in errors if e["type"] == "extra_forbidden"), errors[0] if errors else None)


def validation_param(err: ValidationError) -> str | None:
    """`messages.0.content` style path of the reported field."""
    first = _first_error(err)
    if first is None:
        return None
    return ".".join(str(p) for p in first["loc"]) or None


def validation_message(err: ValidationError) -> str:
    first = _first_error(err)
    where = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{where}: this server does not support the parameter {str(first['loc'][-1])!r}"
    return f"{where}: {first['msg']}" if where else first["msg"]


def validation_code(err: ValidationError) -> str:
    first = _first_error(err)
    return "unsupported_parameter" if first is not None and first["type"] == "extra_forbidden" else "invalid_value"


def to_error(exc: BaseException) -> tuple[int, ErrorResponse, dict[str, str]]:
    """(status, body, extra headers) for any exception."""
    exc = unwrap(exc)
    if isinstance(exc, APIError):
        info = ErrorInfo(message=exc.message, type=exc.type, param=exc.param, code=exc.code)
        retry = getattr(exc, "retry_after_s", None)
        return exc.status, ErrorResponse(error=info), ({"Retry-After": str(round(retry))} if retry else {})
    if isinstance(exc, ValidationError):
        info = ErrorInfo(message=validation_message(exc), type="invalid_request_error",
                         param=validation_param(exc), code=validation_code(exc))
        return 400, ErrorResponse(error=info), {}
    outcome = outcome_of(exc)
    if outcome is None:
        log.error("internal error", exc_info=exc)
        outcome = Outcome(500, "internal_error", "internal_error")
        message = f"internal error ({type(exc).__name__})"
    else:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    retry = getattr(exc, "retry_after_s", None) or outcome.retry_after_s
    headers = {"Retry-After": str(max(1, round(retry)))} if retry else {}
    info = ErrorInfo(message=message, type=outcome.type, code=outcome.code)
    return outcome.status, ErrorResponse(error=info), headers
