"""How any exception ends a call, as an HTTP status: the one classification that the ingress's responses
(api/errors.py) and every stage's request counts (observability/metrics.py) share, so the two always agree.

    APIError (contract)      its own status (400, 401, 404, 413, 503...): the client can act on it
    pydantic ValidationError 400
    the table below          failures that are no fault of the request: overload, a model change, a lost replica,
                             a timeout, each with the Retry-After the client gets
    anything else            500

It sits below the API and observability and above the contract: the Ray errors in the table are the only Ray it
imports, and only their exception classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError
from ray.exceptions import ObjectLostError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from serve_app.contract import APIError, ModelMismatch, Overloaded, unwrap


@dataclass(frozen=True)
class Outcome:
    status: int
    type: str
    code: str
    retry_after_s: float | None = None  # sent as Retry-After: the client may try again


# Failures that are no fault of the request, by exception class (the first matching base wins).
OUTCOMES: dict[type, Outcome] = {
    Overloaded: Outcome(503, "server_overloaded", "overloaded", 1.0),
    BackPressureError: Outcome(503, "server_overloaded", "overloaded", 1.0),  # a stage's max_queued_requests
    ModelMismatch: Outcome(503, "service_unavailable", "model_changed", 1.0),  # no replica left with this model
    RayActorError: Outcome(503, "service_unavailable", "stage_unavailable", 1.0),  # a replica died; Serve restarts it
    # an image's features lost from the object store (their node died) before the decoder stage fetched them
    ObjectLostError: Outcome(503, "service_unavailable", "stage_unavailable", 1.0),
    ReplicaUnavailableError: Outcome(503, "service_unavailable", "stage_unavailable", 1.0),
    DeploymentUnavailableError: Outcome(503, "service_unavailable", "stage_unavailable", 5.0),
    TimeoutError: Outcome(504, "timeout", "stage_timeout"),
}


def outcome_of(exc: BaseException) -> Outcome | None:
    """The table's entry for an (already unwrapped) exception; None: not in the table."""
    return next((o for cls, o in OUTCOMES.items() if isinstance(exc, cls)), None)


def status_of(exc: BaseException) -> int:
    """The HTTP status an exception answers with."""
    exc = unwrap(exc)
    if isinstance(exc, APIError):
        return exc.status
    if isinstance(exc, ValidationError):
        return 400
    outcome = outcome_of(exc)
    return 500 if outcome is None else outcome.status
