"""A tiny ONNX graph emitter: the vision and decoder graphs are written node by node from the reference weights.

Why not torch.onnx.export + pattern-matching fusion: on these dims the standard recipe fused 5/6 vision and 0/6
decoder attentions, and its exported decoder concatenated the KV cache every step. Emitting the fused ops directly
makes the fusion a property of the code, not of a pattern matcher.

Node names say where a node sits, ORT GenAI style: `/decoder/layers.0/attn/qkv/MatMul`. A node's outputs default
to `<node name>/output_<i>`, so every tensor name also says where it came from.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# ORT 1.31 loads IR <= 13 (onnx 1.23 writes 14 by default); 10 is what onnx 1.16+/ORT 1.17+ all read.
IR_VERSION = 10
OPSET = 17  # LayerNormalization became a standard op in 17; TensorRT 8.6+ parses it
MS_DOMAIN = "com.microsoft"

NP_TO_ONNX = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("float16"): TensorProto.FLOAT16,
              np.dtype("uint8"): TensorProto.UINT8, np.dtype("int8"): TensorProto.INT8,
              np.dtype("int32"): TensorProto.INT32, np.dtype("int64"): TensorProto.INT64}


class GraphBuilder:
    """Collects nodes, initializers and graph I/O, then emits one ModelProto.

    `float_dtype` is the dtype weights are stored in (float16 for the fp16 variant); `weight()` casts to it.
    """

    def __init__(self, name: str, float_dtype: np.dtype = np.float32):
        self.name = name
        self.float_dtype = np.dtype(float_dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.quantize = None  # a graphs.emit.quantize scheme: weights become int8 where set

    # -- graph I/O -------------------------------------------------------------------------------------------------
    def input(self, name: str, dtype, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, NP_TO_ONNX[np.dtype(dtype)], shape))
        return name

    def output(self, name: str, dtype, shape: list) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, NP_TO_ONNX[np.dtype(dtype)], shape))
        return name

    # -- constants -------------------------------------------------------------------------------------------------
    def const(self, name: str, array) -> str:
        """An initializer stored exactly as given (dtype included)."""
        if name in self.initializers:
            raise ValueError(f"initializer {name} defined twice")
        self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def weight(self, name: str, array) -> str:
        """A float initializer in the graph's float dtype."""
        return self.const(name, np.asarray(array, dtype=np.float32).astype(self.float_dtype))

    def ints(self, name: str, values) -> str:
        """An int64 constant; shape constants are shared, so asking again for the same name reuses it."""
        values = np.asarray(values, dtype=np.int64)
        if name in self.initializers:
            if not np.array_equal(numpy_helper.to_array(self.initializers[name]), values):
                raise ValueError(f"shape constant {name} redefined with other values")
            return name
        return self.const(name, values)

    # -- nodes -----------------------------------------------------------------------------------------------------
    def node(self, op: str, inputs: list[str], name: str, n_out: int = 1, outputs: list[str] | None = None,
             domain: str = "", **attrs) -> list[str]:
        """Emit one node; returns its output names (`<name>/output_<i>` unless given)."""
        outs = outputs or [f"{name}/output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain or None, **attrs))
        return outs

    def op(self, op: str, inputs: list[str], name: str, domain: str = "", **attrs) -> str:
        """Emit a single-output node and return that output's name."""
        return self.node(op, inputs, name, domain=domain, **attrs)[0]

    def matmul(self, x: str, w: np.ndarray, name: str, bias: np.ndarray | None = None) -> str:
        """x @ w (+ bias): w is (in, out), already transposed from torch's (out, in)."""
        if self.quantize is not None:
            return self.quantize.matmul(self, x, w, name, bias)
        y = self.op("MatMul", [x, self.weight(f"{name}.weight", w)], f"{name}/MatMul")
        if bias is None:
            return y
        return self.op("Add", [y, self.weight(f"{name}.bias", bias)], f"{name}/Add")

    def layer_norm(self, x: str, gamma, beta, eps: float, name: str) -> str:
        g, b = self.weight(f"{name}.weight", gamma), self.weight(f"{name}.bias", beta)
        return self.op("LayerNormalization", [x, g, b], f"{name}/LayerNormalization", axis=-1, epsilon=eps)

    # -- output ----------------------------------------------------------------------------------------------------
    def model(self, contrib: bool = False, check: bool = True) -> onnx.ModelProto:
        """`check=False` for graphs using SimplifiedLayerNormalization: ORT registers it in the ONNX domain, where
        onnx's checker does not know it (ORT still validates every node when it loads the model)."""
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, list(self.initializers.values()))
        opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(MS_DOMAIN, 1)] if contrib else [])
        model = helper.make_model(graph, opset_imports=opsets, producer_name="mmserve.graphs")
        model.ir_version = IR_VERSION
        if check:
            onnx.checker.check_model(model)
        return model


def torch_linear(module) -> tuple[np.ndarray, np.ndarray | None]:
    """An nn.Linear's (weight as (in, out), bias) in float32 numpy."""
    w = module.weight.detach().float().numpy().T.copy()
    b = None if module.bias is None else module.bias.detach().float().numpy().copy()
    return w, b


def torch_ln(module) -> tuple[np.ndarray, np.ndarray]:
    return module.weight.detach().float().numpy(), module.bias.detach().float().numpy()
