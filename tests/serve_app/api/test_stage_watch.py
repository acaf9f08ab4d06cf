"""The stage watch's thread ends when it is stopped, and the ingress stops it when Serve stops the replica."""

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
