"""FFN activations of the compiled model, by ``config.hidden_act`` name (field fault F22 in docs/field-faults.md).

Each is built from torch functions that export to standard ONNX ops at opset 17 (Erf, Tanh, Sigmoid, Relu,
Clip, LeakyRelu, HardSwish, Softplus, Mul, Pow). Names and formulas follow transformers' ``ACT2FN``
(``activations.py``); :data:`prumux_compile.ir.ACTIVATIONS` documents each formula. The reference implements the
same names independently from the formulas (``prumux_compile.reference``).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from prumux_compile.errors import IRInvariantError
from prumux_compile.ir import ACTIVATIONS


def _gelu(x: Tensor) -> Tensor:
    return F.gelu(x)


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def _gelu_10(x: Tensor) -> Tensor:
    return torch.clamp(F.gelu(x), -10.0, 10.0)


def _quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


def _relu2(x: Tensor) -> Tensor:
    r = F.relu(x)
    return r * r


def _leaky_relu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.01)


def _linear(x: Tensor) -> Tensor:
    return x


_FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": _gelu, "gelu_python": _gelu,
    "gelu_new": _gelu_tanh, "gelu_pytorch_tanh": _gelu_tanh, "gelu_python_tanh": _gelu_tanh,
    "gelu_accurate": _gelu_tanh, "gelu_fast": _gelu_tanh,  # 0.7978845608 vs sqrt(2/pi): 3e-12 relative
    "gelu_10": _gelu_10, "quick_gelu": _quick_gelu,
    "relu": F.relu, "relu2": _relu2, "relu6": F.relu6, "leaky_relu": _leaky_relu,
    "silu": F.silu, "swish": F.silu, "mish": F.mish, "hardswish": F.hardswish,
    "tanh": torch.tanh, "sigmoid": torch.sigmoid, "linear": _linear,
}
assert tuple(_FUNCTIONS) == ACTIVATIONS


def activation_function(name: str) -> Callable[[Tensor], Tensor]:
    """The elementwise function of ``config.hidden_act`` ``name``.

    Raises:
        IRInvariantError: ``name`` is not one of :data:`prumux_compile.ir.ACTIVATIONS` (the loader refuses such a
            checkpoint first; reaching this is an IR built by hand).
    """
    try:
        return _FUNCTIONS[name]
    except KeyError:
        raise IRInvariantError(f"activation {name!r} is not implemented; expected one of {', '.join(ACTIVATIONS)}") \
            from None
