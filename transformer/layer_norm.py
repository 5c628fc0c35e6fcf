"""PLACEHOLDER (transformer branch) -- owned by the layer-norm engineer; the merge takes their version of this file.

Minimal drop-ins so the transformer modules import and run before the owner's modules land. The API the transformer
modules rely on (please keep it in the real version):
* ``LayerNorm`` / ``RMSNorm`` take ``nn.LayerNorm`` / ``nn.RMSNorm``'s constructor arguments and have the same
  parameters (``weight``, ``bias``) and ``state_dict``;
* ``forward(input, residual=None)``: without ``residual`` the plain norm; with it ``(norm(input + residual),
  input + residual)`` (the fused "Add & Norm" of ``kernels.layer_norm`` / ``kernels.rms_norm``);
* a ``backend`` attribute (default ``"auto"``) passed to the kernel as ``backend=``; ``transformer.swap`` sets it.
"""

from __future__ import annotations

from torch import nn

import kernels


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` on ``kernels.layer_norm``; ``forward(input, residual=None)`` (PLACEHOLDER, see module doc)."""

    backend = "auto"

    def forward(self, input, residual=None):
        return kernels.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps, residual=residual,
                                  backend=self.backend)


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` on ``kernels.rms_norm``; ``forward(input, residual=None)`` (PLACEHOLDER, see module doc)."""

    backend = "auto"

    def forward(self, input, residual=None):
        return kernels.rms_norm(input, self.normalized_shape, self.weight, self.eps, residual=residual,
                                backend=self.backend)
