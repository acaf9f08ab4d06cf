"""Warm-up runs the real session once per batch size of the profile, before traffic."""

import pytest

from mmcore.runtime.ort_session import open_stage_session
from mmcore.runtime.providers import BatchProfile, CPUSpec
from mmcore.runtime.warmup import warm_up


class CountingSession:
    """Wraps a real session to record the batch sizes it ran."""

    def __init__(self, session):
        self.session, self.batches = session, []

    def run(self, outputs, feeds):
        self.batches.append(feeds["pixels"].shape[0])
        return self.session.run(outputs, feeds)


def test_warm_up_runs_each_profile_batch(vision_dir):
    directory, graph = vision_dir
    opened = open_stage_session(directory, graph, [CPUSpec()])
    counting = CountingSession(opened.session)
    seconds = warm_up(counting, BatchProfile("pixels", (3, 8, 8), opt_batch=4, max_batch=8))
    assert counting.batches == [1, 4, 8] and sorted(seconds) == [1, 4, 8]
    assert all(s >= 0 for s in seconds.values())


def test_warm_up_refuses_sizes_outside_the_profile(vision_dir):
    directory, graph = vision_dir
    opened = open_stage_session(directory, graph, [CPUSpec()])
    with pytest.raises(ValueError, match=r"\[16\] are outside the profile's 1..8"):
        warm_up(opened.session, BatchProfile("pixels", (3, 8, 8), 4, 8), batch_sizes=[2, 16])
