"""The training command's rendering processes change nothing but speed: the same batches in the same order, and
the same trained weights, as rendering inline."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from graphs.demo.dataset import IMAGE_SIZE  # noqa: E402
from graphs.demo.train import rendered_steps, train  # noqa: E402


def test_rendering_ahead_in_a_process_gives_the_inline_batches_in_order():
    inline, ahead = list(rendered_steps(5, 3, workers=0)), list(rendered_steps(5, 3, workers=1))
    assert len(inline) == len(ahead) == 5
    for a, b in zip(inline, ahead):
        assert [e[1] for e in a] == [e[1] for e in b]
        for x, y in zip(a, b):
            for u, v in zip(x[:1] + x[2:], y[:1] + y[2:]):
                assert np.array_equal(u, v)
    assert inline[0][0][0].shape == (IMAGE_SIZE, IMAGE_SIZE, 3)


def test_a_short_run_writes_the_same_weights_with_and_without_rendering_processes(tmp_path):
    from safetensors.numpy import load_file

    train(tmp_path / "inline", steps=3, batch_size=4, lr=1e-3, threads=1, render_workers=0)
    train(tmp_path / "ahead", steps=3, batch_size=4, lr=1e-3, threads=1, render_workers=1)
    a, b = load_file(tmp_path / "inline" / "model.safetensors"), load_file(tmp_path / "ahead" / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
