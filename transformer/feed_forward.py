"""``transformer.FeedForward``: the position-wise feed-forward block of a transformer layer on ``kernels.feed_forward``.

Parameters are the ``nn.Linear`` children ``linear1`` and ``linear2``, named as in ``nn.TransformerEncoderLayer``, so a
layer's ``linear1.*`` / ``linear2.*`` state-dict entries load unchanged. ``forward(x, residual=None)`` returns
``residual + linear2(dropout(activation(linear1(x))))`` in one fused call; dropout acts only in training mode.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

import kernels
from kernels.reference import ACTIVATIONS, GATED_ACTIVATIONS

from ._scripting import NotScriptable

# The activation callables nn.TransformerEncoderLayer accepts, by the name the kernels use.
_CALLABLES = {F.relu: "relu", F.gelu: "gelu", F.silu: "silu"}


def activation_name(activation) -> str:
    """The kernels' name for ``activation``: one of kernels.reference.ACTIVATIONS, or F.relu / F.gelu / F.silu."""
    if isinstance(activation, str) and activation in ACTIVATIONS:
        return activation
    if callable(activation) and activation in _CALLABLES:
        return _CALLABLES[activation]
    raise ValueError(f"argument `activation` must be one of {', '.join(ACTIVATIONS)} (or F.relu, F.gelu, F.silu); "
                     f"got {activation!r}")


class FeedForward(NotScriptable, nn.Module):
    """``Linear(d_model, ffn) -> activation -> dropout -> Linear(ffn, d_model)`` (+ ``residual``), fused.

    Gated activations (``swiglu``, ``geglu``): ``linear1`` has ``2 * dim_feedforward`` outputs, rows
    ``[:dim_feedforward]`` the gate projection and ``[dim_feedforward:]`` the up projection. ``backend`` (an attribute,
    default ``"auto"``) is passed to :func:`kernels.feed_forward`.
    """

    backend = "auto"

    def __init__(self, d_model: int, dim_feedforward: int, activation="gelu", dropout: float = 0.0, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"argument `dropout` must be in [0, 1]; got {dropout!r}")
        self.activation = activation_name(activation)
        width = 2 * dim_feedforward if self.activation in GATED_ACTIVATIONS else dim_feedforward
        self.linear1 = nn.Linear(d_model, width, bias=bias, device=device, dtype=dtype)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, device=device, dtype=dtype)
        self.dropout = float(dropout)

    def forward(self, x, residual=None):
        linear1, linear2 = self.linear1, self.linear2  # one nn.Module attribute lookup each (~0.3 us apiece)
        return kernels.feed_forward(x, linear1.weight, linear1.bias, linear2.weight, linear2.bias,
                                    activation=self.activation, dropout_p=self.dropout if self.training else 0.0,
                                    residual=residual, backend=self.backend)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, dropout={self.dropout}, backend={self.backend!r}"
