"""Fake implementations and autograd for the C++ ops kernels::layer_norm_forward and kernels::layer_norm_backward
(schemas in csrc/ops.cpp; see _layer_norm_common for their contract)."""

from __future__ import annotations

import torch

from .._extension import _C
from . import _layer_norm_common as common

FORWARD = "kernels::layer_norm_forward"
BACKWARD = "kernels::layer_norm_backward"

if _C is not None and hasattr(torch.ops.kernels, "layer_norm_forward"):
    torch.library.register_fake(FORWARD)(common.fake_forward)
    torch.library.register_fake(BACKWARD)(common.fake_backward)
    common.register_autograd(FORWARD, torch.ops.kernels.layer_norm_backward)


def forward(x, residual, weight, bias, eps, rms):
    return torch.ops.kernels.layer_norm_forward(x, residual, weight, bias, eps, rms)
