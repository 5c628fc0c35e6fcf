"""The tolerance helper itself: it passes what the rule allows, and its negative controls fail."""

import pytest
import torch

from kernels import reference
from kernels.testing import assert_close, check_against_reference


def _softmax_case(dtype):
    x = torch.randn(64, 257, dtype=dtype) * 4
    ref = torch.softmax(x.double(), -1)
    return x, ref, torch.softmax(x, -1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_passes_plain_torch(dtype):
    x, ref, torch_out = _softmax_case(dtype)
    assert_close(torch_out, ref, torch_out=torch_out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_wrong_result_fails(dtype):
    x, ref, torch_out = _softmax_case(dtype)
    wrong = torch_out.clone()
    wrong[3, 5] += 0.05
    with pytest.raises(AssertionError, match="worst at \\(3, 5\\)"):
        assert_close(wrong, ref.to(dtype) if dtype == torch.float64 else ref, torch_out=torch_out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_nan_fails(dtype):
    x, ref, torch_out = _softmax_case(dtype)
    poisoned = torch_out.clone()
    poisoned[10, 0] = float("nan")
    with pytest.raises(AssertionError, match="NaN"):
        assert_close(poisoned, ref, torch_out=torch_out)


def test_inf_where_reference_finite_fails():
    ref = torch.ones(4, dtype=torch.float64)
    out = torch.tensor([1.0, float("inf"), 1.0, 1.0])
    with pytest.raises(AssertionError, match="infinite"):
        assert_close(out, ref)


def test_shape_mismatch_fails():
    with pytest.raises(AssertionError, match="shape"):
        assert_close(torch.ones(3), torch.ones(4, dtype=torch.float64))


def test_low_precision_needs_torch_out():
    with pytest.raises(AssertionError, match="torch_out"):
        assert_close(torch.ones(3, dtype=torch.float16), torch.ones(3, dtype=torch.float64))


def test_fp32_fixed_table():
    ref = torch.randn(1000, dtype=torch.float64)
    assert_close(ref.float(), ref)  # rounding to fp32 is well inside the table
    with pytest.raises(AssertionError):
        assert_close((ref + 1e-4).float(), ref)


def test_check_against_reference_passes_reference_against_itself():
    x = torch.randn(5, 33, dtype=torch.float16, requires_grad=True)
    w = torch.randn(33, dtype=torch.float16, requires_grad=True)
    check_against_reference(reference.layer_norm, reference.layer_norm, x, 33, w, None)


def test_check_against_reference_catches_a_wrong_gradient():
    class WrongGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * 3  # wrong: should be 2

    x = torch.randn(8, 8, requires_grad=True)
    with pytest.raises(AssertionError, match="gradient of input 0"):
        check_against_reference(WrongGrad.apply, lambda t: t * 2, x)


def test_check_against_reference_catches_an_ignored_mask():
    """Negative control: a softmax that ignores its mask must fail the checker."""
    x = torch.randn(4, 31)
    mask = torch.rand(4, 31) > 0.3
    with pytest.raises(AssertionError):
        check_against_reference(lambda x, m: reference.masked_softmax(x, None), reference.masked_softmax, x, mask)
