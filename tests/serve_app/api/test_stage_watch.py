"""The stage watch: its thread ends when it is stopped (and the ingress stops it when Serve stops the replica), and
it keeps the answer of the probe that started last, whichever thread ran it."""

from __future__ import annotations

import threading
import time

from serve_app.api.ingress import Ingress
from serve_app.api.stage_watch import StageWatch


def slow_probe(entered: threading.Event):
    def probe() -> list[str]:
        entered.set()
        time.sleep(0.3)  # a controller call in flight when stop() comes
        return []
    return probe


def test_stop_returns_once_the_thread_has_ended():
    entered = threading.Event()
    watch = StageWatch(slow_probe(entered), period_s=0.01).start()
    assert entered.wait(5)
    watch.stop()
    assert not watch.running()


def test_the_ingress_stops_its_stage_watch_when_serve_stops_the_replica():
    user_class = Ingress.func_or_class.__mro__[1]  # the class under serve.ingress's ASGI wrapper
    ingress = user_class.__new__(user_class)
    entered = threading.Event()
    ingress.watch = StageWatch(slow_probe(entered), period_s=0.01).start()
    assert entered.wait(5)
    user_class.__del__(ingress)  # the wrapper's __del__ calls it when the replica stops
    assert not ingress.watch.running()


def test_a_probe_that_started_earlier_does_not_undo_a_later_answer():
    """The thread's probe ran while the vision replicas were starting and answers late; /ready's probe, started
    after they came up, answered first. The watch keeps the later start's answer, so an image request right after
    /ready said ready is not refused."""
    release = threading.Event()
    entered = threading.Event()
    answers = iter([["VisionEncoder"], []])  # the controller's state as each probe starts

    def probe() -> list[str]:
        answer = next(answers)
        if answer:  # the first, slow one
            entered.set()
            assert release.wait(5)
        return answer

    watch = StageWatch(probe, period_s=3600)  # no thread: the two refreshes below are the only probes
    slow = threading.Thread(target=watch.refresh)
    slow.start()
    assert entered.wait(5)
    assert watch.refresh() == frozenset()
    release.set()
    slow.join(5)
    assert watch.missing() == frozenset()


def test_a_refresh_replaces_the_answer_and_a_failed_probe_keeps_it():
    states = iter([["VisionEncoder"], RuntimeError("controller restarting"), []])

    def probe() -> list[str]:
        state = next(states)
        if isinstance(state, Exception):
            raise state
        return state

    watch = StageWatch(probe, period_s=3600)
    assert watch.refresh() == {"VisionEncoder"} and watch.missing() == {"VisionEncoder"}
    assert watch.refresh() == {"VisionEncoder"}
    assert watch.refresh() == frozenset() and watch.missing() == frozenset()


def test_recheck_probes_again_an_answer_naming_a_stage_once_it_is_older_than_its_age():
    states = iter([["VisionEncoder"], []])
    calls = []

    def probe() -> list[str]:
        calls.append(1)
        return next(states)

    watch = StageWatch(probe, period_s=3600)
    assert watch.refresh() == {"VisionEncoder"}
    assert watch.recheck(max_age_s=3600) == {"VisionEncoder"} and len(calls) == 1  # young enough: trusted
    assert watch.recheck(max_age_s=0) == frozenset() and len(calls) == 2  # the replica came up since
    assert watch.recheck(max_age_s=0) == frozenset() and len(calls) == 2  # nothing missing: no probe
