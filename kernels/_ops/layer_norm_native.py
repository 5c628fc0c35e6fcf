"""Fake implementations for the C++ ops kernels::layer_norm_forward and kernels::layer_norm_backward (schemas in
csrc/ops.cpp; see _layer_norm_common for their contract), and the backward's second derivative. The forward's autograd
is C++ (csrc/autograd/layer_norm.cpp): a call here is one dispatcher call, with no Python autograd wrapper."""

from __future__ import annotations

import torch

from .._extension import _C
from . import _layer_norm_common as common

FORWARD = "kernels::layer_norm_forward"
BACKWARD = "kernels::layer_norm_backward"

if _C is not None and hasattr(torch.ops.kernels, "layer_norm_forward"):
    torch.library.register_fake(FORWARD)(common.fake_forward)
    torch.library.register_fake(BACKWARD)(common.fake_backward)
    common.register_double_backward(BACKWARD)
    forward = torch.ops.kernels.layer_norm_forward.default  # (x, residual, weight, bias, eps, rms)
else:

    def forward(*args):
        raise RuntimeError("kernels::layer_norm_forward is not in this build of kernels._C")
