"""Which stages the ingress treats as lost (503 before calling them), from the controller's details dict."""

from ray.serve._private.common import ReplicaState

from serve_app.api.ingress import missing_stages


def _deployment(*states) -> dict:
    return {"replicas": [{"state": s} for s in states]}


def test_a_stage_with_a_running_replica_is_present():
    assert missing_stages({"Decoder": _deployment(ReplicaState.RUNNING, ReplicaState.STARTING)}) == []


def test_a_replica_reconfiguring_in_place_keeps_its_stage_present():
    # a user_config change puts the only replica in UPDATING for a moment; refusing requests then was a bug
    assert missing_stages({"VisionEncoder": _deployment(ReplicaState.UPDATING)}) == []
    assert missing_stages({"VisionEncoder": _deployment("UPDATING")}) == []  # the details dict may hold plain strings


def test_stages_with_no_serving_replica_are_missing_in_name_order():
    deployments = {"VisionEncoder": _deployment(ReplicaState.STARTING), "Decoder": _deployment(),
                   "Preprocess": _deployment(ReplicaState.STOPPING, ReplicaState.RECOVERING),
                   "Ingress": _deployment(ReplicaState.RUNNING)}
    assert missing_stages(deployments) == ["Decoder", "Preprocess", "VisionEncoder"]
