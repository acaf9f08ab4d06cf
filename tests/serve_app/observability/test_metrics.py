"""How stage calls are counted: each way a call can end maps to one outcome and status, and `track` counts once
and lets the exception through. (The values on Ray's metrics endpoint are checked in the e2e observability tests.)"""

from __future__ import annotations

import asyncio

import pytest

from serve_app.api.errors import Unauthorized, to_error
from serve_app.contract import InvalidImage
from serve_app.observability.metrics import StageMetrics, classify, outcome_of_status
from serve_app.contract import Overloaded


class RayWrapped(Exception):
    """Stands in for RayTaskError: Ray keeps the stage's exception as `.cause`."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


@pytest.mark.parametrize("exc, expected", [
    (None, ("ok", 200)),
    (InvalidImage("bad", "image_url"), ("rejected", 400)),
    (RayWrapped(InvalidImage("bad")), ("rejected", 400)),
    (Unauthorized(), ("rejected", 401)),
    (RayWrapped(Overloaded("full", 2.0)), ("overloaded", 503)),
    (asyncio.CancelledError(), ("cancelled", 499)),
    (GeneratorExit(), ("cancelled", 499)),
    (RuntimeError("boom"), ("error", 500)),
])
def test_each_ending_has_one_outcome(exc, expected):
    assert classify(exc) == expected


def test_stage_counts_agree_with_the_status_the_client_gets():
    from ray.exceptions import ObjectLostError, OwnerDiedError, RayActorError
    from ray.serve.exceptions import BackPressureError

    lost = OwnerDiedError("ab" * 14, None, "")  # features lost before the decoder stage fetched them
    for exc in (BackPressureError(num_queued_requests=3, max_queued_requests=2), RayActorError(),
                TimeoutError("slow"), Overloaded("full"), InvalidImage("bad"), RuntimeError("boom"), lost):
        status, _, _ = to_error(exc)
        assert classify(exc) == (outcome_of_status(status), status), exc
    assert classify(TimeoutError()) == ("error", 504) and classify(RayActorError())[1] == 503
    assert isinstance(lost, ObjectLostError) and to_error(lost)[0] == 503


@pytest.mark.parametrize("status, outcome", [(200, "ok"), (400, "rejected"), (404, "rejected"),
                                             (503, "overloaded"), (500, "error")])
def test_response_status_outcome(status, outcome):
    assert outcome_of_status(status) == outcome


def test_track_counts_once_and_reraises(monkeypatch):
    counted = []
    metrics = StageMetrics("unit")
    monkeypatch.setattr(metrics, "count", lambda outcome, status: counted.append((outcome, status)))
    with metrics.track():
        pass
    with pytest.raises(InvalidImage):
        with metrics.track():
            raise InvalidImage("bad")
    assert counted == [("ok", 200), ("rejected", 400)]
