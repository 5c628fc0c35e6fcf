"""transformer.LayerNorm / transformer.RMSNorm: drop-in for nn.LayerNorm / nn.RMSNorm on every backend here."""

import pytest
import torch
from torch import nn

import transformer
from kernels.testing import assert_close, backends_for

BACKENDS = ["torch"] + backends_for("layer_norm", "cpu")

LAYER_NORM_ARGS = [dict(), dict(bias=False), dict(elementwise_affine=False), dict(eps=1e-3)]
RMS_NORM_ARGS = [dict(eps=1e-5), dict(elementwise_affine=False, eps=1e-6), dict()]


def _randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))


def _check_same(ours, theirs, shape, residual=False):
    x = torch.randn(shape, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    if residual:
        r = torch.randn(shape)
        y, h = ours(x, r)
        expected = theirs(x_ref + r)
        assert torch.equal(h, x.detach() + r)
    else:
        y = ours(x)
        expected = theirs(x_ref)
    assert_close(y, expected.double(), name="output", atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    expected.backward(g)
    assert_close(x.grad, x_ref.grad.double(), name="x.grad", atol=1e-4, rtol=1e-4)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert_close(p.grad, q.grad.double(), name=f"{name}.grad", atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs", LAYER_NORM_ARGS, ids=str)
@pytest.mark.parametrize("residual", [False, True])
def test_layer_norm_matches_torch(backend, kwargs, residual):
    theirs = nn.LayerNorm((3, 40), **kwargs)
    _randomise(theirs)
    ours = transformer.LayerNorm((3, 40), **kwargs, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    _check_same(ours, theirs, (2, 5, 3, 40), residual)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs", RMS_NORM_ARGS, ids=str)
@pytest.mark.parametrize("residual", [False, True])
def test_rms_norm_matches_torch(backend, kwargs, residual):
    theirs = nn.RMSNorm(96, **kwargs)
    _randomise(theirs)
    ours = transformer.RMSNorm(96, **kwargs, backend=backend)
    ours.load_state_dict(theirs.state_dict())
    _check_same(ours, theirs, (7, 96), residual)


def test_state_dict_loads_both_ways():
    for ours, theirs in ((transformer.LayerNorm(64), nn.LayerNorm(64)),
                         (transformer.LayerNorm(64, bias=False), nn.LayerNorm(64, bias=False)),
                         (transformer.RMSNorm(64), nn.RMSNorm(64))):
        _randomise(ours)
        theirs.load_state_dict(ours.state_dict())
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
        _randomise(theirs)
        ours.load_state_dict(theirs.state_dict())
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
        assert isinstance(ours, type(theirs))


def test_constructor_dtype_and_repr():
    module = transformer.LayerNorm(32, eps=1e-6, dtype=torch.float64)
    assert module.weight.dtype == torch.float64 and module.eps == 1e-6
    assert "LayerNorm((32,), eps=1e-06" in repr(module)
    assert transformer.RMSNorm([4, 8]).normalized_shape == (4, 8)


def test_from_module_shares_parameters():
    theirs = nn.LayerNorm(48)
    _randomise(theirs)
    ours = transformer.LayerNorm.from_module(theirs)
    assert ours.weight is theirs.weight and ours.bias is theirs.bias
    x = torch.randn(5, 48)
    torch.testing.assert_close(ours(x), theirs(x))
    rms = nn.RMSNorm(48, eps=1e-5)
    ours_rms = transformer.RMSNorm.from_module(rms)
    assert ours_rms.weight is rms.weight
    torch.testing.assert_close(ours_rms(x), rms(x))


def test_parameters_in_another_dtype_are_cast():
    module = transformer.LayerNorm(40)  # fp32 parameters
    _randomise(module)
    x = torch.randn(3, 40, dtype=torch.float64, requires_grad=True)
    y = module(x)
    assert y.dtype == torch.float64
    y.sum().backward()
    assert module.weight.grad.dtype == torch.float32 and module.weight.grad.abs().sum() > 0


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="`normalized_shape`"):
        transformer.LayerNorm(64)(torch.randn(3, 32))
