"""Second derivatives (``create_graph=True``) of every op: gradgradcheck in fp64 on the native CPU kernels (whose
backward ops differentiate through the reference, kernels/_ops/_double_backward.py), the same on the Triton ops in
fp32 against the torch backend, and the clear errors where a derivative is not served (dropout, third order)."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradgradcheck

import kernels
from kernels.testing import assert_close, backends_for

NATIVE = pytest.mark.skipif("native" not in backends_for("layer_norm", "cpu"), reason="kernels._C not built")


def _leaf(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, requires_grad=True)


@NATIVE
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_norms(op, residual):
    torch.manual_seed(0)
    x, weight, bias, r = _leaf(2, 3, 5), _leaf(5), _leaf(5), _leaf(2, 3, 5)

    def fn(x, weight, *rest):
        extra = dict(residual=rest[-1]) if residual else {}
        if op == "layer_norm":
            return kernels.layer_norm(x, 5, weight, rest[0], 1e-5, backend="native", **extra)
        return kernels.rms_norm(x, 5, weight, 1e-5, backend="native", **extra)

    inputs = (x, weight) + ((bias,) if op == "layer_norm" else ()) + ((r,) if residual else ())
    assert gradgradcheck(fn, inputs)


@NATIVE
def test_layer_norm_without_affine_and_over_two_dims():
    torch.manual_seed(0)
    x = _leaf(3, 2, 4)
    assert gradgradcheck(lambda x: kernels.layer_norm(x, (2, 4), backend="native"), (x,))


@NATIVE
@pytest.mark.parametrize("mask", ["bool", "float", "causal"])
def test_masked_softmax(mask):
    torch.manual_seed(0)
    x = _leaf(2, 3, 4)
    keep = torch.rand(3, 4) > 0.3
    keep[1] = False  # a fully masked row: zeros, zero derivatives
    if mask == "bool":
        assert gradgradcheck(lambda x: kernels.masked_softmax(x, keep, scale=0.7, backend="native"), (x,))
    elif mask == "float":
        additive = _leaf(1, 3, 4)
        assert gradgradcheck(lambda x, m: kernels.masked_softmax(x, m, scale=0.7, backend="native"), (x, additive))
    else:
        assert gradgradcheck(lambda x: kernels.masked_softmax(x, is_causal=True, backend="native"), (x,))


@NATIVE
@pytest.mark.parametrize("masks", ["causal+padding", "bool", "float"])
def test_attention(masks):
    torch.manual_seed(0)
    q, k, v = _leaf(2, 2, 3, 4), _leaf(2, 1, 5, 4), _leaf(2, 1, 5, 4)  # GQA, Sq != Sk
    kwargs = dict(enable_gqa=True, backend="native")
    if masks == "causal+padding":
        kwargs.update(is_causal=True, key_padding_mask=torch.tensor([[False] * 4 + [True], [False, True] * 2 + [False]]))
    elif masks == "bool":
        keep = torch.rand(3, 5) > 0.4
        keep[0] = False  # a fully masked query row
        kwargs.update(attn_mask=keep)
    else:
        kwargs.update(attn_mask=torch.randn(2, 1, 3, 5, dtype=torch.float64))
    assert gradgradcheck(lambda q, k, v: kernels.scaled_dot_product_attention(q, k, v, **kwargs), (q, k, v))


@NATIVE
def test_varlen_attention():
    torch.manual_seed(0)
    q, k, v = _leaf(5, 2, 4), _leaf(6, 1, 4), _leaf(6, 1, 4)
    cu_q, cu_k = torch.tensor([0, 2, 5], dtype=torch.int32), torch.tensor([0, 4, 6], dtype=torch.int32)
    assert gradgradcheck(lambda q, k, v: kernels.varlen_attention(q, k, v, cu_q, cu_k, 3, 4, is_causal=True,
                                                                  backend="native"), (q, k, v))


@NATIVE
def test_residual_add():
    assert gradgradcheck(lambda x, r: kernels.residual_add(x, r, backend="native"), (_leaf(3, 4), _leaf(3, 4)))


def _second_derivatives(fn, inputs):
    out = fn(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    first = torch.autograd.grad((out * out.detach().cos()).sum(), inputs, create_graph=True)
    return torch.autograd.grad(sum((g * g).sum() for g in first), inputs)


@pytest.mark.interpret
@pytest.mark.parametrize("op", ["layer_norm", "masked_softmax", "attention"])
def test_triton_second_derivatives_match_the_torch_backend(op):
    if "triton" not in backends_for(op, "cpu"):
        pytest.skip("no Triton backend here")
    torch.manual_seed(0)
    if op == "layer_norm":
        inputs = (_leaf(4, 16, dtype=torch.float32), _leaf(16, dtype=torch.float32))
        call = lambda backend: lambda x, w: kernels.layer_norm(x, 16, w, residual=x.detach(), backend=backend)  # noqa: E731
    elif op == "masked_softmax":
        inputs = (_leaf(2, 4, 8, dtype=torch.float32),)
        call = lambda backend: lambda x: kernels.masked_softmax(x, is_causal=True, backend=backend)  # noqa: E731
    else:
        inputs = tuple(_leaf(1, 2, 5, 16, dtype=torch.float32) for _ in range(3))
        call = lambda backend: lambda q, k, v: kernels.scaled_dot_product_attention(  # noqa: E731
            q, k, v, is_causal=True, backend=backend)
    for got, want in zip(_second_derivatives(call("triton"), inputs), _second_derivatives(call("torch"), inputs)):
        assert_close(got, want, atol=1e-4, rtol=1e-4)


@NATIVE
def test_dropout_and_third_derivatives_raise_naming_the_op():
    q, k, v = _leaf(1, 1, 3, 4), _leaf(1, 1, 3, 4), _leaf(1, 1, 3, 4)
    out = kernels.scaled_dot_product_attention(q, k, v, dropout_p=0.5, backend="native")
    (dq,) = torch.autograd.grad(out.sum(), (q,), create_graph=True)
    with pytest.raises(RuntimeError, match=r"kernels.scaled_dot_product_attention: second derivatives with "
                                           r"dropout_p > 0 are not supported"):
        torch.autograd.grad(dq.sum(), (q,))
    x = _leaf(3, 4)
    y = kernels.layer_norm(x, 4, backend="native")
    (dx,) = torch.autograd.grad((y * y).sum(), (x,), create_graph=True)
    torch.autograd.grad((dx * dx).sum(), (x,), retain_graph=True)  # the second derivative: served
    with pytest.raises(RuntimeError, match="kernels.layer_norm / kernels.rms_norm: third and higher derivatives"):
        torch.autograd.grad((dx * dx).sum(), (x,), create_graph=True)


@NATIVE
def test_first_derivative_alone_records_no_graph():
    """Without create_graph the backward calls the backward op below autograd: its results carry no graph."""
    x = _leaf(3, 4)
    (dx,) = torch.autograd.grad(kernels.layer_norm(x, 4, backend="native").pow(2).sum(), (x,))
    assert dx.grad_fn is None and not dx.requires_grad


@pytest.mark.parametrize("activation", [None, "gelu", "swiglu"])
@pytest.mark.parametrize("op", ["linear", "feed_forward"])
def test_linear_and_feed_forward(op, activation):
    backends = [b for b in backends_for(op, "cpu") if b == "native"]
    if not backends or (op == "feed_forward" and activation is None):
        pytest.skip("no native backend here" if not backends else "feed_forward takes an activation")
    torch.manual_seed(0)
    width = 6 if activation == "swiglu" else 3
    x, w1, b1 = _leaf(2, 4), _leaf(width, 4), _leaf(width)
    w2, b2, residual = _leaf(4, 3), _leaf(4), _leaf(2, 4)
    if op == "linear":
        assert gradgradcheck(lambda x, w, b: kernels.linear(x, w, b, activation=activation, backend="native"),
                             (x, w1, b1))
    else:
        assert gradgradcheck(lambda *a: kernels.feed_forward(*a[:5], activation=activation, residual=a[5],
                                                             backend="native"), (x, w1, b1, w2, b2, residual))


def test_feed_forward_with_dropout_refuses_second_derivatives_naming_the_op():
    backends = backends_for("feed_forward", "cpu")
    if not backends:
        pytest.skip("no fast backend here")
    x, w1, w2 = _leaf(3, 4, dtype=torch.float32), _leaf(6, 4, dtype=torch.float32), _leaf(4, 6, dtype=torch.float32)
    out = kernels.feed_forward(x, w1, None, w2, None, dropout_p=0.5, backend=backends[0])
    torch.autograd.grad(out.pow(2).sum(), (x,), retain_graph=True)  # the first derivative: served
    with pytest.raises(RuntimeError, match="kernels.feed_forward: second derivatives with dropout_p > 0"):
        torch.autograd.grad(out.pow(2).sum(), (x,), create_graph=True)


@NATIVE
def test_drop_in_modules_pass_gradgradcheck():
    """torch's own check of its LayerNorm and MultiheadAttention, run on our drop-ins (fp64, native backend)."""
    import transformer

    torch.manual_seed(0)
    norm = transformer.LayerNorm(5).double()
    assert gradgradcheck(lambda x: norm(x), (_leaf(3, 5),))
    attention = transformer.MultiheadAttention(4, 2, batch_first=True).double()
    padding = torch.tensor([[False, False, True], [False, False, False]])
    assert gradgradcheck(lambda q: attention(q, q, q, key_padding_mask=padding, need_weights=True), (_leaf(2, 3, 4),))
