"""The row-wise int8 decoder (`cpu-int8-rowwise`): MatMulNBits reads our block layout as we mean it, and a row's
logits never depend on the other rows of its batch (what makes seeded and greedy requests replay under load); the
default `cpu-int8`, one activation scale per tensor, is the one whose rows do interact."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphs.families.own.config import PRESETS
from graphs.emit.onnx_ops import IR_VERSION, MS_DOMAIN
from mmcore.runtime.kv_runner import OrtDecoderRunner
from mmcore.runtime.ort_session import cpu_session
from graphs.emit.quantize import BLOCK, quantize_blocks

TINY = PRESETS["tiny"]


def _dequantize(packed: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    n, blocks, _ = packed.shape
    w = (packed.astype(np.float32) - 128) * scales.reshape(n, blocks, 1)
    return w.reshape(n, -1)[:, :k].T  # (K, N)


@pytest.mark.parametrize("k,n", [(64, 48), (100, 24), (BLOCK, 1)])  # K a whole number of blocks, padded, one block
def test_block_layout_is_what_matmulnbits_computes_with(k, n):
    rng = np.random.default_rng(k)
    w = rng.standard_normal((k, n)).astype(np.float32)
    w[:, 0] = 0.0  # an all-zero column: scale 1, not a division by zero
    packed, scales = quantize_blocks(w)
    assert packed.dtype == np.uint8 and packed.shape == (n, -(-k // BLOCK), BLOCK)
    deq = _dequantize(packed, scales, k)
    assert np.all(np.abs(deq - w) <= np.repeat(scales.reshape(n, -1), BLOCK, axis=1)[:, :k].T / 2 + 1e-7)

    node = helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], domain=MS_DOMAIN, K=k, N=n, bits=8,
                            block_size=BLOCK, accuracy_level=0)  # fp32 compute: checks the layout alone
    graph = helper.make_graph([node], "nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, n])],
                              [numpy_helper.from_array(packed, "w"), numpy_helper.from_array(scales, "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1)])
    model.ir_version = IR_VERSION
    x = rng.standard_normal((3, k)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x @ deq, rtol=1e-4, atol=1e-4)


def _row_alone_together_crowded(tiny_artifacts, variant: str, threads: int) -> tuple[np.ndarray, ...]:
    """Row 0's logits for one decode position: stepped with 3 other rows, alone, and beside 50x louder rows."""
    out, manifest = tiny_artifacts
    d = TINY.decoder
    sess = cpu_session(str(out / manifest.graphs["decoder"].variants[variant].file), threads)
    dec = OrtDecoderRunner(sess, manifest.decoder, slots=4, max_context=d.max_positions)
    rng = np.random.default_rng(0)
    lengths = np.array([3 + 2 * slot for slot in range(4)])
    for slot in range(4):
        dec.prefill(slot, rng.standard_normal((lengths[slot], d.width)).astype(np.float32))
    x = rng.standard_normal((4, d.width)).astype(np.float32)
    # the same position each time (the step rewrites it): together, row 0 alone, row 0 beside very different rows
    together = dec.decode(4, x, lengths)[0].copy()
    alone = dec.decode(1, x[:1], lengths[:1])[0].copy()
    loud = x.copy()
    loud[1:] *= 50.0  # a per-tensor activation scale would coarsen row 0 by 50x here
    crowded = dec.decode(4, loud, lengths)[0].copy()
    return together, alone, crowded


@pytest.mark.parametrize("threads", [1, 2])
def test_rowwise_int8_decoder_rows_do_not_depend_on_their_batch(tiny_artifacts, threads):
    together, alone, crowded = _row_alone_together_crowded(tiny_artifacts, "cpu-int8-rowwise", threads)
    assert np.array_equal(together, alone) and np.array_equal(crowded, alone)


def test_default_int8_decoder_rows_share_one_activation_scale(tiny_artifacts):
    """Why the row-wise variant exists: with the per-tensor scheme, loud neighbours move a row's logits."""
    _, alone, crowded = _row_alone_together_crowded(tiny_artifacts, "cpu-int8", 1)
    assert not np.array_equal(crowded, alone)
    np.testing.assert_allclose(crowded, alone, atol=0.5)  # moved, not broken: the int8 parity gate still holds
