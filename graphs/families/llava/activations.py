"""The activations LLaVA checkpoints name (transformers' ACT2FN keys), as ONNX in the two graph styles.

`portable`: standard ops only (TensorRT fuses the erf and tanh GELU patterns itself). `cpu`: the com.microsoft
kernel where one exists (Gelu, FastGelu = tanh GELU, QuickGelu), else the standard form.
"""

from __future__ import annotations

import numpy as np

from graphs.emit.onnx_ops import MS_DOMAIN, GraphBuilder


def _const(g: GraphBuilder, name: str, value: float) -> str:
    return g.weight(name, np.array(value, np.float32))


def _erf_gelu(g: GraphBuilder, x: str, name: str) -> str:
    """x * 0.5 * (1 + erf(x / sqrt 2))"""
    e = g.op("Erf", [g.op("Mul", [x, _const(g, f"{name}.rsqrt2", 1 / np.sqrt(2))], f"{name}/Mul_scale")], f"{name}/Erf")
    e = g.op("Mul", [g.op("Add", [e, _const(g, f"{name}.one", 1.0)], f"{name}/Add_one"),
                     _const(g, f"{name}.half", 0.5)], f"{name}/Mul_half")
    return g.op("Mul", [x, e], f"{name}/Mul")


def _tanh_gelu(g: GraphBuilder, x: str, name: str) -> str:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))"""
    x3 = g.op("Mul", [g.op("Mul", [x, x], f"{name}/Mul_sq"), x], f"{name}/Mul_cube")
    inner = g.op("Add", [x, g.op("Mul", [x3, _const(g, f"{name}.c", 0.044715)], f"{name}/Mul_c")], f"{name}/Add_x")
    t = g.op("Tanh", [g.op("Mul", [inner, _const(g, f"{name}.k", np.sqrt(2 / np.pi))], f"{name}/Mul_k")],
             f"{name}/Tanh")
    t = g.op("Mul", [g.op("Add", [t, _const(g, f"{name}.one", 1.0)], f"{name}/Add_one"),
                     _const(g, f"{name}.half", 0.5)], f"{name}/Mul_half")
    return g.op("Mul", [x, t], f"{name}/Mul")


def _sigmoid_gate(g: GraphBuilder, x: str, name: str, alpha: float) -> str:
    """x * sigmoid(alpha x): quick_gelu (alpha 1.702) and silu (alpha 1)."""
    z = x if alpha == 1.0 else g.op("Mul", [x, _const(g, f"{name}.alpha", alpha)], f"{name}/Mul_alpha")
    return g.op("Mul", [x, g.op("Sigmoid", [z], f"{name}/Sigmoid")], f"{name}/Mul")


PORTABLE = {
    "gelu": _erf_gelu,
    "gelu_pytorch_tanh": _tanh_gelu,
    "gelu_new": _tanh_gelu,
    "quick_gelu": lambda g, x, name: _sigmoid_gate(g, x, name, 1.702),
    "silu": lambda g, x, name: _sigmoid_gate(g, x, name, 1.0),
    "relu": lambda g, x, name: g.op("Relu", [x], f"{name}/Relu"),
}
CPU = {
    **PORTABLE,
    "gelu": lambda g, x, name: g.op("Gelu", [x], f"{name}/Gelu", domain=MS_DOMAIN),
    "gelu_pytorch_tanh": lambda g, x, name: g.op("FastGelu", [x], f"{name}/FastGelu", domain=MS_DOMAIN),
    "gelu_new": lambda g, x, name: g.op("FastGelu", [x], f"{name}/FastGelu", domain=MS_DOMAIN),
    "quick_gelu": lambda g, x, name: g.op("QuickGelu", [x], f"{name}/QuickGelu", domain=MS_DOMAIN, alpha=1.702),
}
STYLES = {"portable": PORTABLE, "cpu": CPU}


def activation(g: GraphBuilder, style: str, act: str, x: str, name: str) -> str:
    return STYLES[style][act](g, x, name)
