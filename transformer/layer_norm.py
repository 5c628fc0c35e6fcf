"""``transformer.LayerNorm`` and ``transformer.RMSNorm``: drop-ins for ``nn.LayerNorm`` / ``nn.RMSNorm`` on
``kernels.layer_norm`` / ``kernels.rms_norm``.

They subclass the torch modules, so the constructor arguments (``elementwise_affine``, ``bias``, ``device``,
``dtype``), the parameters and the ``state_dict`` are exactly torch's and load both ways. ``forward(x)`` returns the
normalised ``x``; ``forward(x, residual)`` is the fused "Add & Norm" and returns ``(norm(x + residual), x + residual)``.
Parameters in another dtype than the input (e.g. fp32 parameters with bf16 activations) are cast to the input's dtype
(the gradient flows back through the cast), so the kernels read one dtype.
"""

from __future__ import annotations

import torch
from torch import nn

import kernels

from ._scripting import NotScriptable


def as_input_dtype(parameter: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """``parameter`` in ``x``'s dtype (a differentiable cast, only when they differ); None stays None."""
    if parameter is None or parameter.dtype == x.dtype:
        return parameter
    return parameter.to(x.dtype)


class LayerNorm(NotScriptable, nn.LayerNorm):
    """``nn.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None, dtype=None)`` with
    the fused kernels; ``backend`` picks the kernels (see ``kernels.layer_norm``)."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None):
        return kernels.layer_norm(input, self.normalized_shape, as_input_dtype(self.weight, input),
                                  as_input_dtype(self.bias, input), self.eps, residual=residual,
                                  backend=self.backend)

    @classmethod
    def from_module(cls, module: nn.LayerNorm, backend: str = "auto") -> "LayerNorm":
        """A LayerNorm that shares ``module``'s parameters (no copy), for swapping it into a model."""
        new = cls(module.normalized_shape, module.eps, module.elementwise_affine, bias=module.bias is not None,
                  device="meta", backend=backend)
        new.weight, new.bias = module.weight, module.bias
        return new


class RMSNorm(NotScriptable, nn.RMSNorm):
    """``nn.RMSNorm(normalized_shape, eps=None, elementwise_affine=True, device=None, dtype=None)`` with the fused
    kernels (``eps=None``: the epsilon of fp32, or of fp64 for fp64 inputs, as torch)."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None):
        return kernels.rms_norm(input, self.normalized_shape, as_input_dtype(self.weight, input), self.eps,
                                residual=residual, backend=self.backend)

    @classmethod
    def from_module(cls, module: nn.RMSNorm, backend: str = "auto") -> "RMSNorm":
        """An RMSNorm that shares ``module``'s parameters (no copy), for swapping it into a model."""
        new = cls(module.normalized_shape, module.eps, module.elementwise_affine, device="meta", backend=backend)
        new.weight = module.weight
        return new
