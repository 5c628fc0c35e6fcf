"""The cuBLASLt epilogue path of the native CUDA kernels.linear / kernels.feed_forward (csrc/cuda/linear_cublaslt.cu).

GPU tier: every activation it fuses (None, relu, gelu_tanh) with and without bias, in fp16, bf16 and fp32, forward
and backward against kernels.reference, the weight-gradient primitive (BGRADB), with ``kernels._C.cublaslt_calls()`` showing which calls took the path and
which fell back (odd or misaligned shapes, dropout, activations cuBLASLt does not fuse). CPU tier: the extension says
whether the path was compiled in, and the weight-gradient primitive's CPU kernel."""

import contextlib

import pytest
import torch

import kernels
from kernels import _extension, reference
from kernels.testing import assert_close, available_devices, backends_for, check_against_reference

_C = _extension._C
WITH_CUBLASLT = bool(getattr(_C, "with_cublaslt", False))
FUSED = (None, "relu", "gelu_tanh")
ALIGNED = [(1000, 768, 3072), (37, 64, 136)]  # rows, d_in, d_out: K and N multiples of 8, any row count
FALLBACK = (7, 129, 65)

needs_cublaslt = pytest.mark.skipif(
    not (WITH_CUBLASLT and "cuda" in available_devices() and "native" in backends_for("linear", "cuda")),
    reason="kernels._C built without the cuBLASLt path, or no CUDA device",
)


def _calls() -> int:
    torch.cuda.synchronize()
    return _C.cublaslt_calls()


@contextlib.contextmanager
def _tf32(enabled: bool):
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _tolerances(dtype, activation):
    """fp16/bf16: the tolerance rule as it is. fp32 runs with TF32 off (FP32 compute) against the fp32 GPU reference:
    summation order only, except that cuBLASLt's GELU epilogue may evaluate tanh with the hardware approximation
    (relative error <= 2**-11), which the weight gradient sums over up to 1000 rows."""
    if dtype != torch.float32:
        return {}
    if activation == "gelu_tanh":
        return dict(atol=2e-3, rtol=1e-3, grad_atol=5e-2, grad_rtol=1e-3)
    return dict(atol=1e-4, rtol=1e-4, grad_atol=1e-3, grad_rtol=1e-4)


def _linear_inputs(rows, d_in, d_out, dtype, bias=True):
    x = torch.randn(rows, d_in, device="cuda").to(dtype).requires_grad_()
    weight = (torch.randn(d_out, d_in, device="cuda") / d_in**0.5).to(dtype).requires_grad_()
    b = torch.randn(d_out, device="cuda").to(dtype).requires_grad_() if bias else None
    return x, weight, b


def _linear(x, weight, bias=None, *, activation=None):
    return kernels.linear(x, weight, bias, activation=activation, backend="native")


def _block(rows, d, ffn, dtype, bias=True):
    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda") * scale).to(dtype).requires_grad_()

    w1, w2 = leaf(ffn, d, scale=d**-0.5), leaf(d, ffn, scale=ffn**-0.5)
    b1, b2 = (leaf(ffn), leaf(d)) if bias else (None, None)
    return leaf(rows, d), w1, b1, w2, b2, leaf(rows, d)


def _feed_forward(x, w1, b1, w2, b2, *, activation="gelu", dropout_p=0.0, residual=None, dropout_mask=None):
    return kernels.feed_forward(x, w1, b1, w2, b2, activation=activation, dropout_p=dropout_p, residual=residual,
                                backend="native")


@pytest.mark.skipif("native" not in backends_for("feed_forward", "cpu"), reason="kernels._C lacks the ops")
@pytest.mark.parametrize("bias", [True, False])
def test_weight_grad_primitive_cpu(bias):
    # The same op on the CPU (an ATen GEMM and a sum): opcheck, values, and the argument check.
    grad, x = torch.randn(7, 5), torch.randn(7, 3)
    torch.library.opcheck(torch.ops.kernels.linear_weight_grad, (grad, x, bias))
    grad_w, grad_b = torch.ops.kernels.linear_weight_grad(grad, x, bias)
    assert_close(grad_w, grad.double().t() @ x.double())
    if bias:
        assert_close(grad_b, grad.double().sum(0))
    else:
        assert grad_b.shape == (0,)
    with pytest.raises(ValueError, match="argument `grad` has shape"):
        torch.ops.kernels.linear_weight_grad(torch.randn(6, 5), x, bias)


def test_extension_says_whether_cublaslt_is_compiled_in():
    if _C is None:
        pytest.skip("kernels._C is not built")
    assert isinstance(_C.with_cublaslt, bool)
    assert hasattr(_C, "cublaslt_calls") == _C.with_cublaslt
    if not _C.with_cuda:
        assert not _C.with_cublaslt  # a CPU-only build never has it


@pytest.mark.gpu
@needs_cublaslt
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("activation", FUSED)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows, d_in, d_out", ALIGNED)
def test_linear_takes_cublaslt_forward_and_backward(dtype, activation, bias, rows, d_in, d_out):
    x, weight, b = _linear_inputs(rows, d_in, d_out, dtype, bias)
    with _tf32(False):
        with torch.no_grad():  # inference: RELU/GELU(_BIAS), one GEMM
            before = _calls()
            _linear(x, weight, b, activation=activation)
            assert _calls() == before + 1
        # Training: GELU_AUX keeps the pre-activation; relu with save_pre takes the generic path (the contract keeps
        # the pre-activation itself, not RELU_AUX's bit-mask); None saves nothing and stays on cuBLASLt, and its
        # backward reduces the bias gradient in the weight-gradient GEMM (BGRADB).
        before = _calls()
        check_against_reference(_linear, reference.linear, x, weight, b, activation=activation,
                                **_tolerances(dtype, activation))
        assert _calls() == before + {None: 1 + bias, "relu": 0, "gelu_tanh": 1}[activation]


@pytest.mark.gpu
@needs_cublaslt
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("activation", FUSED)
@pytest.mark.parametrize("bias", [True, False])
def test_feed_forward_fused_gemms(dtype, activation, bias):
    # Training: Linear1 on cuBLASLt only for gelu_tanh (GELU_AUX keeps the pre-activation; relu and None saving it
    # take the generic path); Linear2 always (C = residual, beta = 1); backward DGELU_BGRAD on grad @ w2 for gelu_tanh
    # and, with a bias, BGRADB for w2's and b2's gradients. Inference: both Linears.
    x, w1, b1, w2, b2, res = _block(1000, 768, 3072, dtype, bias)
    expected = {None: 1, "relu": 1, "gelu_tanh": 3}[activation] + bias
    with _tf32(False):
        before = _calls()
        check_against_reference(_feed_forward, reference.feed_forward, x, w1, b1, w2, b2, activation=activation,
                                residual=res, **_tolerances(dtype, activation))
        assert _calls() == before + expected
        with torch.no_grad():
            before = _calls()
            _feed_forward(x, w1, b1, w2, b2, activation=activation, residual=res)
            assert _calls() == before + 2


@pytest.mark.gpu
@needs_cublaslt
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 1000])
def test_weight_grad_primitive(dtype, rows):
    # BGRADB: grad.T @ x with grad's column sums; the row count is the reduction and may be anything.
    grad, x = torch.randn(rows, 136, device="cuda").to(dtype), torch.randn(rows, 72, device="cuda").to(dtype)
    with _tf32(False):
        before = _calls()
        grad_w, grad_b = torch.ops.kernels.linear_weight_grad(grad, x, True)
        assert _calls() == before + 1
        expected_w = grad.t().float() @ x.float()
    atol = 1e-4 if dtype == torch.float32 else 2e-2 * rows**0.5
    assert_close(grad_w.float(), expected_w, atol=atol, rtol=1e-2)
    assert grad_b.dtype == torch.float32
    assert_close(grad_b, grad.float().sum(0), atol=atol, rtol=1e-2)  # summed in fp32 (cuBLASLt or at::sum)


@pytest.mark.gpu
@needs_cublaslt
def test_bias_gradient_is_fp32_past_the_fp16_range():
    # Loss-scaled fp16 gradients: 4096 rows of ~64 sum to ~2.6e5 per column, past fp16's 65504. A bias gradient
    # written in fp16 (cuBLASLt's default bias type) would be inf; in fp32 it is the exact column sum up to rounding.
    rows, d_in, d_out = 4096, 64, 128
    grad = (64 + torch.rand(rows, d_out, device="cuda")).half()
    x = torch.randn(rows, d_in, device="cuda").half()
    before = _calls()
    _, grad_b = torch.ops.kernels.linear_weight_grad(grad, x, True)  # BGRADB
    assert _calls() > before
    assert grad_b.dtype == torch.float32 and torch.isfinite(grad_b).all()
    assert_close(grad_b, grad.float().sum(0), atol=0.0, rtol=1e-4)
    # DGELU_BGRAD: grad_pre = gelu'(pre) * (grad @ weight); with pre = 3, gelu' ~ 1, so the sums are ~2.6e5 too.
    pre = torch.full((rows, d_in), 3.0, device="cuda").half()
    weight = torch.eye(d_out, d_in, device="cuda").half()  # grad @ weight: grad's first d_in columns
    seed = torch.zeros(1, dtype=torch.int64, device="cuda")
    before = _calls()
    grad_pre, grad_bias = torch.ops.kernels.linear_act_backward(grad, weight, pre, "gelu_tanh", 0.0, seed)
    assert _calls() > before
    assert grad_bias.dtype == torch.float32 and torch.isfinite(grad_bias).all()
    assert_close(grad_bias, grad_pre.float().sum(0), atol=0.0, rtol=1e-3)
    assert grad_bias.min() > 65504


@pytest.mark.gpu
@needs_cublaslt
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation", FUSED)
def test_odd_shapes_fall_back(dtype, activation):
    rows, d_in, d_out = FALLBACK  # K = 129 and N = 65 are not multiples of 8
    x, weight, b = _linear_inputs(rows, d_in, d_out, dtype)
    before = _calls()
    check_against_reference(_linear, reference.linear, x, weight, b, activation=activation)
    x, w1, b1, w2, b2, res = _block(rows, d_in, d_out, dtype)
    check_against_reference(_feed_forward, reference.feed_forward, x, w1, b1, w2, b2, activation=activation,
                            residual=res)
    assert _calls() == before


@pytest.mark.gpu
@needs_cublaslt
def test_misaligned_pointer_falls_back_and_noncontiguous_input_does_not():
    rows, d_in, d_out = 64, 128, 256
    _, weight, b = _linear_inputs(rows, d_in, d_out, torch.float16)
    storage = torch.randn(rows * d_in + 1, device="cuda").half()
    misaligned = storage[1:].view(rows, d_in).requires_grad_()  # 2 bytes past a 16-byte boundary
    before = _calls()
    check_against_reference(_linear, reference.linear, misaligned, weight, b, activation="gelu_tanh")
    assert _calls() == before
    strided = torch.randn(rows, 2 * d_in, device="cuda").half()[:, ::2].requires_grad_()  # copied, then aligned
    check_against_reference(_linear, reference.linear, strided, weight, b, activation="gelu_tanh")
    assert _calls() == before + 1


@pytest.mark.gpu
@needs_cublaslt
def test_unfused_activations_and_dropout_take_the_generic_path():
    x, w1, b1, w2, b2, res = _block(256, 128, 512, torch.bfloat16)
    with torch.no_grad():
        for activation in ("gelu", "silu", "swiglu", "geglu"):
            w = torch.cat([w1, w1]) if activation in reference.GATED_ACTIVATIONS else w1
            bias = torch.cat([b1, b1]) if activation in reference.GATED_ACTIVATIONS else b1
            before = _calls()
            _linear(x, w, bias, activation=activation)
            assert _calls() == before, activation
        before = _calls()
        _feed_forward(x, w1, b1, w2, b2, activation="gelu_tanh", dropout_p=0.1, residual=res)
        assert _calls() == before + 1  # Linear1 has dropout (generic); Linear2 + residual has none (cuBLASLt)


@pytest.mark.gpu
@needs_cublaslt
def test_fp32_with_tf32():
    x, weight, b = _linear_inputs(512, 256, 384, torch.float32)
    with _tf32(True):
        before = _calls()
        check_against_reference(_linear, reference.linear, x, weight, b, activation="gelu_tanh",
                                atol=1e-2, rtol=1e-2, grad_atol=1e-2, grad_rtol=1e-2)  # TF32: 10-bit mantissa
        assert _calls() == before + 1


@pytest.mark.gpu
@needs_cublaslt
def test_empty_rows():
    x, weight, b = _linear_inputs(0, 64, 128, torch.float16)
    out = _linear(x, weight, b, activation="gelu_tanh")
    assert out.shape == (0, 128)


@pytest.mark.gpu
@needs_cublaslt
def test_negative_control_dropped_bias_fails():
    x, weight, b = _linear_inputs(64, 128, 256, torch.bfloat16)
    def bias_ignored(x, weight, bias, activation=None):
        return _linear(x, weight, None, activation=activation)

    with pytest.raises(AssertionError):
        check_against_reference(bias_ignored, reference.linear, x, weight, b, activation="gelu_tanh")
