"""The Triton layer norm / RMS norm as the custom ops kernels::triton_layer_norm_forward and
kernels::triton_layer_norm_backward, with their fake implementations and autograd (see _layer_norm_common)."""

from __future__ import annotations

from typing import Optional

import torch

from ..triton import layer_norm as launcher
from . import _layer_norm_common as common


@torch.library.custom_op("kernels::triton_layer_norm_forward", mutates_args=())
def forward(x: torch.Tensor, residual: Optional[torch.Tensor], weight: Optional[torch.Tensor],
            bias: Optional[torch.Tensor], eps: float, rms: bool
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return launcher.forward(x, residual, weight, bias, eps, rms)


@torch.library.custom_op("kernels::triton_layer_norm_backward", mutates_args=())
def backward(dy: torch.Tensor, dh: Optional[torch.Tensor], h: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
             weight: Optional[torch.Tensor], has_bias: bool, rms: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return launcher.backward(dy, dh, h, mean, rstd, weight, has_bias, rms)


forward.register_fake(common.fake_forward)
backward.register_fake(common.fake_backward)
common.register_autograd(forward, backward)
