"""PLACEHOLDER (transformer branch) -- owned by the feed-forward engineer; the merge takes their version of this file.

Minimal drop-in so the model family imports and runs before the owner's module lands. The API the models rely on
(please keep it in the real version): ``FeedForward(d_model, dim_feedforward, activation="gelu", dropout=0.0,
bias=True, device=None, dtype=None)`` with ``nn.Linear`` children ``linear1`` and ``linear2``;
``forward(x, residual=None)`` = ``residual + linear2(dropout(activation(linear1(x))))`` through
``kernels.feed_forward``; a ``backend`` attribute (default ``"auto"``) passed to the kernel.
"""

from __future__ import annotations

from torch import nn

import kernels
from kernels.reference import GATED_ACTIVATIONS


class FeedForward(nn.Module):
    """The position-wise feed-forward block on ``kernels.feed_forward`` (PLACEHOLDER, see module doc)."""

    backend = "auto"

    def __init__(self, d_model, dim_feedforward, activation="gelu", dropout=0.0, bias=True, device=None, dtype=None):
        super().__init__()
        width = 2 * dim_feedforward if activation in GATED_ACTIVATIONS else dim_feedforward
        self.linear1 = nn.Linear(d_model, width, bias=bias, device=device, dtype=dtype)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, device=device, dtype=dtype)
        self.activation = activation
        self.dropout = dropout

    def forward(self, x, residual=None):
        return kernels.feed_forward(x, self.linear1.weight, self.linear1.bias, self.linear2.weight, self.linear2.bias,
                                    activation=self.activation, dropout_p=self.dropout if self.training else 0.0,
                                    residual=residual, backend=self.backend)
