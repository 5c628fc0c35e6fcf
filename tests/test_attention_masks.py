"""The attention masks that normalize_attention_args decides once for every backend: torch's attention-bias masks
(``CausalBias``) against SDPA with the same mask, other tensor subclasses, and the floating-mask dtype rule
(SDPA's: a floating ``attn_mask`` has ``q``'s dtype)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right, causal_upper_left

import kernels
from kernels import reference
from kernels.testing import assert_close, available_devices, backends_for

CASES = [(device, backend) for device in available_devices()
         for backend in backends_for("attention", device) + ["torch"]]


def ids(case):
    return f"{case[0]}-{case[1]}"


def _qkv(sq, sk, device, dtype=torch.float32):
    torch.manual_seed(0)
    return [torch.randn(2, 2, s, 16, device=device, dtype=dtype, requires_grad=True) for s in (sq, sk, sk)]


@pytest.mark.interpret
@pytest.mark.parametrize("case", CASES, ids=ids)
@pytest.mark.parametrize("variant", [causal_upper_left, causal_lower_right])
@pytest.mark.parametrize("sq,sk", [(5, 5), (3, 7)])
def test_causal_bias_matches_sdpa_forward_and_backward(case, variant, sq, sk):
    device, backend = case
    q, k, v = _qkv(sq, sk, device)
    bias = variant(sq, sk)
    out = kernels.scaled_dot_product_attention(q, k, v, attn_mask=bias, backend=backend)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    expected_grads = torch.autograd.grad(expected.sum(), (q, k, v))
    assert_close(out, expected, atol=2e-5, rtol=2e-5)
    for got, want in zip(grads, expected_grads):
        assert_close(got, want, atol=5e-5, rtol=5e-5)


@pytest.mark.interpret
def test_causal_bias_upper_left_is_top_left_causality():
    """Upper-left differs from lower-right when Sq != Sk: the mask is read as causality, not as a tensor."""
    q, k, v = _qkv(3, 7, "cpu")
    upper = kernels.scaled_dot_product_attention(q, k, v, attn_mask=causal_upper_left(3, 7))
    assert_close(upper, kernels.scaled_dot_product_attention(q, k, v, is_causal=True))
    lower = kernels.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(3, 7))
    keep = torch.ones(3, 7, dtype=torch.bool).tril(diagonal=7 - 3)
    assert_close(lower, reference.scaled_dot_product_attention(q, k, v, keep))


def test_causal_bias_of_other_lengths_names_attn_mask():
    q, k, v = _qkv(3, 7, "cpu")
    with pytest.raises(ValueError, match=r"argument `attn_mask` is a CausalBias of \(Sq, Sk\) = \(3, 5\); expected "
                                         r"\(3, 7\)"):
        kernels.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(3, 5))


class _LoggingTensor(torch.Tensor):
    """A subclass with a behaviour of its own (its __torch_function__)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return super().__torch_function__(func, types, args, kwargs or {})


class _PlainSubclass(torch.Tensor):
    """A subclass that adds nothing: read as its data."""


def test_tensor_subclasses_as_attn_mask_are_read_as_data_or_refused():
    q, k, v = _qkv(4, 4, "cpu")
    keep = torch.rand(4, 4) > 0.3
    plain = kernels.scaled_dot_product_attention(q, k, v, attn_mask=keep.as_subclass(_PlainSubclass))
    assert type(plain) is torch.Tensor
    assert_close(plain, kernels.scaled_dot_product_attention(q, k, v, attn_mask=keep))
    with pytest.raises(ValueError, match="argument `attn_mask` is a _LoggingTensor, a tensor subclass"):
        kernels.scaled_dot_product_attention(q, k, v, attn_mask=keep.as_subclass(_LoggingTensor))


@pytest.mark.interpret
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_floating_mask_of_another_dtype_is_refused_by_every_backend(case):
    device, backend = case
    q, k, v = _qkv(4, 6, device)
    mask = torch.randn(4, 6, dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match=r"argument `attn_mask` has dtype torch.float64; expected bool \(True = take "
                                         r"part\) or torch.float32 \(the dtype of `q`"):
        kernels.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend=backend)
    with pytest.raises(ValueError, match="`attn_mask` has dtype torch.int32"):
        kernels.scaled_dot_product_attention(q, k, v, attn_mask=mask.int(), backend=backend)
    out = kernels.scaled_dot_product_attention(q, k, v, attn_mask=mask.float(), backend=backend)  # q's dtype: served
    assert_close(out, reference.scaled_dot_product_attention(q, k, v, mask.float()), atol=2e-5, rtol=2e-5)


def test_shape_messages_print_the_expected_shape_plainly():
    q = torch.randn(2, 4, 8, 16)
    with pytest.raises(ValueError, match=r"argument `k` has shape \(3, 4, 10, 16\); expected \(2, Hkv, Sk, D\) "):
        kernels.scaled_dot_product_attention(q, torch.randn(3, 4, 10, 16), torch.randn(2, 4, 10, 16))
    with pytest.raises(ValueError, match=r"argument `v` has shape \(4, 10, 16\); expected \(2, Hkv, Sk, Dv\) "):
        kernels.scaled_dot_product_attention(q, torch.randn(2, 4, 10, 16), torch.randn(4, 10, 16))
    with pytest.raises(ValueError, match=r"expected \(3, 2, Hkv, Sk, D\) "):
        kernels.scaled_dot_product_attention(q.expand(3, 2, 4, 8, 16), torch.randn(2, 4, 10, 16),
                                             torch.randn(2, 4, 10, 16))


@pytest.mark.parametrize("scale", [float("inf"), float("nan"), True, "2"])
def test_scale_is_validated_like_the_other_ops(scale):
    q, k, v = _qkv(4, 4, "cpu")
    with pytest.raises(ValueError, match="argument `scale` must be a real number"):
        kernels.scaled_dot_product_attention(q, k, v, scale=scale)
    with pytest.raises(ValueError, match="argument `scale` must be a real number"):
        kernels.masked_softmax(q, scale=scale)
