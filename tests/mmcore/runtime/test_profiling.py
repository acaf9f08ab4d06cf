"""The ORT profiling switch on a real session over a small hand-made graph (y = 2x + 1, so outputs are exact):
plain runs and IO-bound runs go to a profiling twin for exactly N calls, the trace is ORT's own JSON, and the
summary command reads it."""

from __future__ import annotations

import json
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from pydantic import ValidationError

from serve_app.observability import profile_summary
from mmcore.runtime.ort_session import session_options
from mmcore.runtime.profile_settings import ProfileSettings
from mmcore.runtime.profiling import ProfilableSession


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    nodes = [helper.make_node("Mul", ["x", "two"], ["t"]), helper.make_node("Add", ["t", "one"], ["y"])]
    graph = helper.make_graph(nodes, "affine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
                               helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # onnx 1.23 writes 14 by default, which ORT 1.31 refuses
    path = tmp_path_factory.mktemp("graph") / "affine.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture
def session(model_path):
    base = ort.InferenceSession(str(model_path), session_options(1), providers=["CPUExecutionProvider"])
    return ProfilableSession(base, model_path, threads=1, stage="test")


def model_runs(trace: str) -> int:
    return sum(1 for e in json.loads(open(trace).read()) if e.get("name") == "model_run")


def test_run_goes_to_the_twin_for_n_calls_then_back(session, tmp_path):
    session.arm(ProfileSettings(calls=2, dir=str(tmp_path / "p"), label="a"))
    assert session.profiling
    for i in range(4):
        x = np.full((3, 4), float(i), np.float32)
        np.testing.assert_array_equal(session.run(["y"], {"x": x})[0], 2 * x + 1)
    assert not session.profiling
    [trace] = session.traces
    assert trace.startswith(str(tmp_path / "p" / "test-")) and "-a_" in trace
    assert model_runs(trace) == 2
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [trace.rsplit("/", 1)[1]]


def test_io_binding_is_replayed_onto_the_twin(session, tmp_path):
    x, y = np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32)
    io = session.io_binding()
    io.bind_input("x", "cpu", 0, np.float32, list(x.shape), x.ctypes.data)
    io.bind_output("y", "cpu", 0, np.float32, list(y.shape), y.ctypes.data)
    session.run_with_iobinding(io)  # on the normal session, before profiling
    session.arm(ProfileSettings(calls=1, dir=str(tmp_path), label="io"))
    for value in (3.0, 5.0):  # the first on the twin (its own binding, same buffers), the second back on the base
        x[...] = value
        session.run_with_iobinding(io)
        np.testing.assert_array_equal(y, 2 * value + 1)
    assert [model_runs(t) for t in session.traces] == [1]


def test_same_settings_do_not_rearm_and_calls_0_ends_early(session, tmp_path):
    settings = ProfileSettings(calls=10, dir=str(tmp_path), label="b")
    session.arm(settings)
    session.run(["y"], {"x": np.ones((1, 4), np.float32)})
    session.arm(settings)  # reconfigure with an unchanged profile block: still the same profile in progress
    session.run(["y"], {"x": np.ones((1, 4), np.float32)})
    assert session.traces == []
    session.arm(settings.model_copy(update={"calls": 0}))
    assert not session.profiling
    assert [model_runs(t) for t in session.traces] == [2]


def test_settings_are_validated():
    with pytest.raises(ValidationError):
        ProfileSettings(calls=-1)
    with pytest.raises(ValidationError):
        ProfileSettings(calls=1, label="../escape")
    with pytest.raises(ValidationError):
        ProfileSettings(calls=1, file="x")  # unknown field: a typo is an error, not silently ignored


def test_summary_by_operator_type(session, tmp_path, capsys):
    session.arm(ProfileSettings(calls=3, dir=str(tmp_path)))
    for _ in range(3):
        session.run(["y"], {"x": np.ones((8, 4), np.float32)})
    [trace] = session.traces
    summary = profile_summary.summarize(profile_summary.load_events(trace))
    assert summary.model_runs == 3
    assert {(s.op_type, s.provider, s.calls) for s in summary.ops} == {
        ("Mul", "CPUExecutionProvider", 3), ("Add", "CPUExecutionProvider", 3)}
    assert summary.kernel_us == sum(s.total_us for s in summary.ops)
    assert profile_summary.main([trace, "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "over 3 model runs" in out and len(out.strip().splitlines()) == 3  # header, one op, total


def test_summary_refuses_what_is_not_a_finished_trace(tmp_path, capsys):
    empty = tmp_path / "open.json"
    empty.write_text("")
    assert profile_summary.main([str(empty)]) == 2
    assert "still on" in capsys.readouterr().err
    assert profile_summary.main([str(tmp_path / "missing.json")]) == 2


class WatchedSession:
    """A real InferenceSession that counts the calls running on it, records that count at every end_profiling, and
    can hold a call before it reaches ORT (the test decides when it goes on)."""

    def __init__(self, real_class, *args, **kwargs):
        self.real = real_class(*args, **kwargs)
        self.running = 0
        self.running_at_end: list[int] = []  # one entry per end_profiling call
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()  # a call is in flight (held or not)

    def run(self, *args, **kwargs):
        self.running += 1
        try:
            self.entered.set()
            assert self.hold.wait(10), "the test never let the held call go on"
            return self.real.run(*args, **kwargs)
        finally:
            self.running -= 1

    def end_profiling(self):
        self.running_at_end.append(self.running)
        return self.real.end_profiling()

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.fixture
def twins(session, monkeypatch) -> list[WatchedSession]:
    """Every profiling twin the session builds from now on, watched (the normal session was built before)."""
    built, real_class = [], ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **kw: built.append(WatchedSession(real_class, *a, **kw))
                        or built[-1])
    return built


def run_held(session, twin: WatchedSession, value: float) -> tuple[threading.Thread, list]:
    """Start one call that the twin holds before ORT runs it, as the step thread would be mid-call; -> its thread
    and where its output lands."""
    out = []
    twin.hold.clear()
    x = np.full((2, 4), value, np.float32)
    thread = threading.Thread(target=lambda: out.append(session.run(["y"], {"x": x})[0]))
    thread.start()
    assert twin.entered.wait(10)
    return thread, out


def test_rearming_never_ends_a_twin_while_a_call_runs_on_it(session, twins, tmp_path):
    session.arm(ProfileSettings(calls=5, dir=str(tmp_path), label="first"))
    [first] = twins
    thread, out = run_held(session, first, 3.0)
    session.arm(ProfileSettings(calls=2, dir=str(tmp_path), label="second"))  # a reconfigure while that call runs
    assert first.running_at_end == []  # not ended under the running call: it will be when the call returns
    first.hold.set()
    thread.join(10)
    np.testing.assert_array_equal(out[0], np.full((2, 4), 7.0, np.float32))
    assert first.running_at_end == [0]  # ended once, after its call
    [trace] = session.traces
    assert "-first_" in trace and model_runs(trace) == 1  # the call that was running is in its profile
    session.run(["y"], {"x": np.ones((1, 4), np.float32)})  # the next calls go to the new twin
    assert twins[1].running == 0 and session.profiling


def test_switching_off_during_the_last_profiled_call_ends_the_twin_once_after_it(session, twins, tmp_path):
    session.arm(ProfileSettings(calls=1, dir=str(tmp_path), label="last"))
    [twin] = twins
    thread, out = run_held(session, twin, 1.0)  # the twin's last call
    session.arm(ProfileSettings(calls=0, dir=str(tmp_path)))  # switched off meanwhile
    twin.hold.set()
    thread.join(10)
    np.testing.assert_array_equal(out[0], np.full((2, 4), 3.0, np.float32))
    assert twin.running_at_end == [0]  # once (not by both the call and the switch), and not under the call
    assert [model_runs(t) for t in session.traces] == [1] and not session.profiling
