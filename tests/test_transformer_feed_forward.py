"""transformer.FeedForward: nn.TransformerEncoderLayer's feed-forward half on kernels.feed_forward."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kernels import reference
from kernels.testing import assert_close, backends_for
from transformer import FeedForward


def _torch_block(layer: nn.TransformerEncoderLayer, x):
    return x + layer.linear2(layer.dropout(layer.activation(layer.linear1(x))))


@pytest.mark.parametrize("backend", ["torch"] + backends_for("feed_forward", "cpu"))
def test_state_dict_maps_from_transformer_encoder_layer_and_outputs_agree(backend):
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=40, activation=F.gelu, dropout=0.1,
                                       batch_first=True).eval()
    block = FeedForward(16, 40, activation=F.gelu, dropout=0.1).eval()
    own = {k: v for k, v in layer.state_dict().items() if k.startswith(("linear1.", "linear2."))}
    assert set(own) == set(block.state_dict())
    block.load_state_dict(own)
    block.backend = backend
    x = torch.randn(2, 5, 16, requires_grad=True)
    out = block(x, residual=x)
    with torch.no_grad():
        ref = reference.feed_forward(x.double(), *(p.double() for p in (block.linear1.weight, block.linear1.bias,
                                                                       block.linear2.weight, block.linear2.bias)),
                                     activation="gelu", residual=x.double())
        torch_out = _torch_block(layer, x)
    assert_close(out, ref)
    torch.testing.assert_close(out, torch_out)
    out.sum().backward()
    assert x.grad is not None and block.linear1.weight.grad is not None


@pytest.mark.parametrize("activation", ["swiglu", "geglu"])
def test_gated_parameter_shapes(activation):
    block = FeedForward(8, 12, activation=activation, bias=False)
    assert block.linear1.weight.shape == (24, 8) and block.linear1.bias is None
    assert block.linear2.weight.shape == (8, 12)
    assert block(torch.randn(3, 8)).shape == (3, 8)


def test_dropout_only_in_training():
    block = FeedForward(8, 16, activation="relu", dropout=0.5)
    x = torch.randn(4, 8)
    block.eval()
    assert torch.equal(block(x), block(x))
    block.train()
    assert not torch.equal(block(x), block(x))


def test_bad_arguments():
    with pytest.raises(ValueError, match="`activation`"):
        FeedForward(8, 16, activation="tanh")
    with pytest.raises(ValueError, match="`dropout`"):
        FeedForward(8, 16, dropout=2.0)
