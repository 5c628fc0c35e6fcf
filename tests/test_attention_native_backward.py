"""The native CPU attention backward's softmax term (csrc/cpu/attention_backward.cpp): where all of a sequence's keys
fit in one tile (Sk <= 128) and there is no dropout, D = sum_j P_j dP_j over P / sum(P), so dP_j - D cancels where a
row's probability sits on one key, as in the reference: a single key's dQ and dK (exactly 0) come out at rounding
level, where D = dO . O (flash attention's formulation, and torch's CPU SDPA's) gives up to ~2e-5 in fp32 at scale 2.
Longer rows keep D = dO . O; both match the reference by the tolerance rule."""

import pytest
import torch

import kernels
from kernels import reference
from kernels._extension import has_native_kernel
from kernels.testing import check_against_reference

pytestmark = pytest.mark.skipif(not has_native_kernel("attention_forward", "cpu"),
                                reason="kernels._C lacks the native attention kernels")


# |dQ|, |dK| allowed for one key: a few units of rounding of |dO| |v| ~ 10 (torch's SDPA: fp32 2e-5, fp64 3e-14)
ROUNDING = {torch.float32: 1e-6, torch.float64: 1e-13, torch.bfloat16: 1e-6}


def _assert_rounding_level(*grads):
    for grad in grads:
        assert grad.abs().max() <= ROUNDING[grad.dtype], grad.abs().max()


def _gradients(q, k, v, **kwargs):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = kernels.scaled_dot_product_attention(q, k, v, backend="native", **kwargs)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.dtype)
    return torch.autograd.grad(out, (q, k, v), grad_out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("scale", [None, 2.0])
def test_one_key_gives_zero_query_and_key_gradients(dtype, scale):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 5, 64, generator=generator).to(dtype)
    k, v = (torch.randn(2, 3, 1, 64, generator=generator).to(dtype) for _ in range(2))
    dq, dk, dv = _gradients(q, k, v, scale=scale)
    _assert_rounding_level(dq, dk)
    assert dv.abs().min() > 0  # dV = sum over the queries of dO: the one key takes all of it


def test_varlen_sequences_of_one_key_give_zero_query_and_key_gradients():
    generator = torch.Generator().manual_seed(2)
    q = torch.randn(11, 2, 23, generator=generator, requires_grad=True)
    k, v = (torch.randn(4, 2, 23, generator=generator, requires_grad=True) for _ in range(2))
    cu_q, cu_k = torch.tensor([0, 1, 2, 3, 11], dtype=torch.int32), torch.tensor([0, 1, 2, 3, 4], dtype=torch.int32)
    out = kernels.varlen_attention(q, k, v, cu_q, cu_k, 8, 1, scale=2.0, backend="native")
    dq, dk = torch.autograd.grad(out, (q, k), torch.randn(out.shape, generator=generator))
    _assert_rounding_level(dq, dk)


@pytest.mark.parametrize("sk", [3, 64, 128, 129, 300])  # one tile (the P . dP term) and several (dO . O)
@pytest.mark.parametrize("scale", [None, 0.5])  # scores of std 1 and 4 (concentrated rows)
@pytest.mark.parametrize("kind", ["none", "causal+padding"])
def test_concentrated_and_spread_rows_match_the_reference(sk, scale, kind):
    generator = torch.Generator().manual_seed(sk)
    q = torch.randn(2, 4, 37, 64, generator=generator)
    k, v = (torch.randn(2, 4, sk, 64, generator=generator) for _ in range(2))
    kwargs = {"scale": scale}
    if kind != "none":
        padding = torch.zeros(2, sk, dtype=torch.bool)
        padding[1, sk // 2:] = True
        kwargs.update(is_causal=True, key_padding_mask=padding)
    check_against_reference(lambda *a, **kw: kernels.scaled_dot_product_attention(*a, backend="native", **kw),
                            reference.scaled_dot_product_attention, *(t.requires_grad_() for t in (q, k, v)), **kwargs)
