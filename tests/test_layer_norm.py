"""kernels.layer_norm / kernels.rms_norm (with the fused residual add) on every backend usable here.

CPU tier: the torch reference, the C++ CPU kernels ("native") and the Triton kernels under the interpreter, all held
to the same cases. Triton on the interpreter runs fp32/fp16 only and takes the looped (long-row) kernels from 1025
columns on, so hidden sizes 4097 and 65536 exercise them. GPU tier (marker `gpu`): bf16, realistic sizes,
determinism, torch.compile and CUDA graphs (tests/test_layer_norm_gpu.py).
"""

import pytest
import torch
from _layer_norm_cases import EPS, OPS, norm_fn, norm_inputs, reference_fn

import kernels
from kernels import reference
from kernels.testing import available_devices, backends_for, check_against_reference

# fp32 gradient slack for zero-variance rows (see test_hidden_sizes); fp16/bf16 and fp64 use their own rules.
_ZERO_VARIANCE_GRAD_ATOL = 1e-4


def _backends(op, device="cpu"):
    return ["torch"] + backends_for(op, device)


def _dtypes(backend):
    """The dtypes each backend is tested in on the CPU (the Triton interpreter: fp32/fp16 only)."""
    return {"torch": (torch.float32,), "native": (torch.float32, torch.float64, torch.bfloat16),
            "triton": (torch.float32, torch.float16)}[backend]


def _cases():
    for op in OPS:
        for backend in _backends(op):
            yield op, backend


CASES = list(_cases())


@pytest.mark.parametrize("op,backend", CASES)
@pytest.mark.parametrize("hidden", [1, 127, 1000, 4097])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "add&norm"])
def test_hidden_sizes(op, backend, hidden, residual):
    # A row of one element has zero variance: rstd = eps**-0.5 ~ 316 multiplies the rounding of g - mean(g) (~1e-7 in
    # fp32) in dx, so the fixed fp32 gradient table needs that factor (plain PyTorch in fp32 misses it as well).
    grad_atol = _ZERO_VARIANCE_GRAD_ATOL if hidden == 1 else None
    shape = (3, 5, hidden) if hidden < 2048 else (2, hidden)  # long rows: few of them (the interpreter is slow)
    for dtype in _dtypes(backend):
        args, kwargs = norm_inputs(op, shape, dtype=dtype, residual=residual)
        check_against_reference(norm_fn(op, backend), reference_fn(op), *args, grad_atol=grad_atol, **kwargs)


@pytest.mark.parametrize("op,backend", CASES)
def test_hidden_65536(op, backend):
    args, kwargs = norm_inputs(op, (2, 65536), residual=True)
    check_against_reference(norm_fn(op, backend), reference_fn(op), *args, **kwargs)


@pytest.mark.parametrize("op,backend", CASES)
@pytest.mark.parametrize("shape,n_dims", [((1, 768), 1), ((300, 64), 1), ((2, 3, 4, 40), 2), ((96,), 1)],
                         ids=["one-row", "many-rows", "2d-normalized", "1d-input"])
def test_shapes(op, backend, shape, n_dims):
    args, kwargs = norm_inputs(op, shape, n_dims, residual=True)
    check_against_reference(norm_fn(op, backend), reference_fn(op), *args, **kwargs)


@pytest.mark.parametrize("op,backend", CASES)
@pytest.mark.parametrize("weight,bias", [(False, False), (True, False), (False, True)],
                         ids=["no-affine", "weight-only", "bias-only"])
def test_optional_parameters(op, backend, weight, bias):
    if op == "rms_norm" and bias:
        pytest.skip("rms_norm has no bias")
    args, kwargs = norm_inputs(op, (7, 200), weight=weight, bias=bias, residual=True)
    check_against_reference(norm_fn(op, backend), reference_fn(op), *args, **kwargs)


@pytest.mark.parametrize("op,backend", CASES)
def test_zero_variance_rows(op, backend):
    x = torch.randn(6, 300)
    x[0] = 3.0  # constant row: zero variance (its fp32 mean is exact)
    x[1] = 0.0  # all zeros: zero variance and zero mean square
    x.requires_grad_()
    w = (torch.rand(300) + 0.5).requires_grad_()
    b = torch.randn(300).requires_grad_()
    args = (x, 300, w, b, EPS) if op == "layer_norm" else (x, 300, w, EPS)
    out = check_against_reference(norm_fn(op, backend), reference_fn(op), *args, grad_atol=_ZERO_VARIANCE_GRAD_ATOL)
    assert torch.isfinite(out).all()
    if op == "layer_norm":
        torch.testing.assert_close(out[:2].detach(), b.detach().expand(2, 300))  # xhat = 0: the bias alone
    # A large constant row: the output stays finite (its fp32 mean is not exact, so gradients are ill-conditioned).
    big = torch.full((2, 300), -1e4)
    assert torch.isfinite(norm_fn(op, backend)(big, *args[1:])).all()


@pytest.mark.parametrize("op,backend", CASES)
def test_large_magnitudes(op, backend):
    for dtype in _dtypes(backend):
        big = 100.0 if dtype != torch.float16 else 50.0
        # A large offset with a small spread: the two-pass variance keeps it exact where a one-pass one cancels.
        args, kwargs = norm_inputs(op, (9, 513), dtype=dtype, scale=big, offset=20 * big, residual=True)
        out = check_against_reference(norm_fn(op, backend), reference_fn(op), *args, **kwargs)
        assert all(torch.isfinite(o).all() for o in out)


@pytest.mark.parametrize("op,backend", CASES)
@pytest.mark.parametrize("layout", ["transposed", "strided"])
def test_non_contiguous(op, backend, layout):
    base = torch.randn(64, 40)
    x = base.t() if layout == "transposed" else torch.randn(8, 160)[:, ::2]  # (40, 64) or (8, 80)
    residual = torch.randn(x.shape[1], x.shape[0]).t() if layout == "transposed" else torch.randn(8, 160)[:, 1::2]
    assert not x.is_contiguous() and not residual.is_contiguous()
    n = x.shape[-1]
    w = torch.randn(2 * n)[::2]  # a strided weight too
    x, residual, w = x.requires_grad_(), residual.requires_grad_(), w.detach().requires_grad_()
    args = (x, n, w, None, EPS) if op == "layer_norm" else (x, n, w, EPS)
    check_against_reference(norm_fn(op, backend), reference_fn(op), *args, residual=residual)


@pytest.mark.parametrize("op,backend", CASES)
@pytest.mark.parametrize("shape", [(0, 16), (2, 0, 16)])
def test_empty(op, backend, shape):
    args, kwargs = norm_inputs(op, shape, residual=True)
    y, h = norm_fn(op, backend)(*args, **kwargs)
    assert y.shape == shape and h.shape == shape
    (y.sum() + h.sum()).backward()
    assert args[0].grad.shape == shape
    assert torch.equal(args[2].grad, torch.zeros(16))  # no rows: zero weight gradient


@pytest.mark.parametrize("op,backend", CASES)
def test_properties(op, backend):
    """Without affine parameters, layer norm rows have mean 0 and variance 1; RMS norm rows mean square 1; the
    returned h is exactly x + residual (rounded once)."""
    x, residual = torch.randn(16, 512) * 3 + 1, torch.randn(16, 512)
    args = (x, 512, None, None, 0.0) if op == "layer_norm" else (x, 512, None, 0.0)
    y, h = norm_fn(op, backend)(*args, residual=residual)
    assert torch.equal(h, x + residual)
    if op == "layer_norm":
        torch.testing.assert_close(y.mean(-1), torch.zeros(16), atol=1e-5, rtol=0)
        torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(16), atol=1e-4, rtol=0)
    else:
        torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(16), atol=1e-4, rtol=0)


@pytest.mark.parametrize("op,backend", CASES)
def test_default_eps(op, backend):
    x = (torch.randn(4, 64) * 1e-3).requires_grad_()
    out = norm_fn(op, backend)(x, 64)
    expected = reference_fn(op)(x, 64)  # both in fp32: rms_norm's eps=None is finfo(float32).eps on both sides
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("backend", _backends("rms_norm"))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_rms_norm_default_eps_is_that_of_the_statistics_dtype(backend, dtype):
    """eps=None is F.rms_norm's: fp32's epsilon for 16-bit inputs (not the input dtype's: 0.0078 for bf16 would
    change rows of small magnitude 2.7x), fp64's for fp64."""
    if dtype not in {"torch": (dtype,), **{b: _dtypes(b) for b in ("native", "triton")}}[backend]:
        pytest.skip(f"backend {backend!r} is not tested in {dtype} on the CPU")
    x = torch.full((3, 16), 1e-2, dtype=dtype) * torch.linspace(0.5, 1.5, 16, dtype=dtype)
    x[1] *= 1e-3 if dtype == torch.float64 else 1.0
    torch.testing.assert_close(kernels.rms_norm(x, (16,), backend=backend), torch.nn.functional.rms_norm(x, (16,)))


@pytest.mark.parametrize("op,backend", CASES)
def test_gradient_of_h_only(op, backend):
    """Pre-norm layers use h as the next residual: a loss on h alone must reach x and residual unchanged."""
    args, kwargs = norm_inputs(op, (5, 33), residual=True)
    _y, h = norm_fn(op, backend)(*args, **kwargs)
    g = torch.randn_like(h)
    h.backward(g)
    assert torch.equal(args[0].grad, g) and torch.equal(kwargs["residual"].grad, g)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", ["native", "triton"])
def test_backward_deterministic(op, backend):
    if backend not in backends_for(op, "cpu"):
        pytest.skip(f"backend {backend} not usable here")
    args, kwargs = norm_inputs(op, (257, 96), residual=True)
    grads = []
    for _ in range(3):
        y, h = norm_fn(op, backend)(*args, **kwargs)
        grads.append(torch.autograd.grad((y, h), [args[0], args[2]], (torch.ones_like(y), torch.ones_like(h))))
    for other in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other))


def test_native_gradcheck_fp64():
    if "native" not in backends_for("layer_norm", "cpu"):
        pytest.skip("kernels._C without layer_norm")
    x = torch.randn(4, 3, 17, dtype=torch.float64, requires_grad=True)
    r = torch.randn(4, 3, 17, dtype=torch.float64, requires_grad=True)
    w = torch.randn(17, dtype=torch.float64, requires_grad=True)
    b = torch.randn(17, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, r, w, b: kernels.layer_norm(x, 17, w, b, residual=r, backend="native"), (x, r, w, b))
    assert torch.autograd.gradcheck(lambda x, w: kernels.layer_norm(x, 17, w, backend="native"), (x, w))
    assert torch.autograd.gradcheck(
        lambda x, r, w: kernels.rms_norm(x, 17, w, 1e-5, residual=r, backend="native"), (x, r, w))
    assert torch.autograd.gradcheck(lambda x: kernels.rms_norm(x, (3, 17), None, 1e-5, backend="native"), (x,))


def _op_samples(device, dtype):
    m, n = 6, 40
    x = torch.randn(m, n, device=device, dtype=dtype, requires_grad=True)
    r = torch.randn(m, n, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(n, device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(n, device=device, dtype=dtype, requires_grad=True)
    yield (x, r, w, b, 1e-5, False)
    yield (x, None, None, None, 1e-6, True)
    yield (x, r, w, None, 1e-6, True)


def _registered_ops(device):
    ops = []
    if "native" in backends_for("layer_norm", device):
        ops.append(("native", torch.ops.kernels.layer_norm_forward.default))
    if "triton" in backends_for("layer_norm", device):
        ops.append(("triton", torch.ops.kernels.triton_layer_norm_forward.default))
    return ops


@pytest.mark.parametrize("device", available_devices())
def test_opcheck(device):
    ops = _registered_ops(device)
    if not ops:
        pytest.skip("no fast backend here")
    for _name, op in ops:
        for sample in _op_samples(device, torch.float32):
            torch.library.opcheck(op, sample)


@pytest.mark.parametrize("device", available_devices())
def test_opcheck_backward_ops(device):
    for name, _ in _registered_ops(device):
        backward = (torch.ops.kernels.layer_norm_backward if name == "native"
                    else torch.ops.kernels.triton_layer_norm_backward).default
        forward = (torch.ops.kernels.layer_norm_forward if name == "native"
                   else torch.ops.kernels.triton_layer_norm_forward).default
        for x, r, w, b, eps, rms in _op_samples(device, torch.float32):
            with torch.no_grad():
                _y, h, mean, rstd = forward(x, r, w, b, eps, rms)
            normalised = (h if r is not None else x).detach()
            dy = torch.randn_like(normalised)
            dh = torch.randn_like(normalised) if r is not None else None
            torch.library.opcheck(backward, (dy, dh, normalised, mean, rstd, None if w is None else w.detach(),
                                              b is not None, rms))


@pytest.mark.parametrize("op,backend", [c for c in CASES if c[1] != "torch"])
def test_torch_compile_fullgraph(op, backend):
    """Traces through the registered ops and their fakes and autograd without graph breaks (aot_eager on the CPU:
    the tracing is the point, not Inductor's code generation; the GPU tier compiles with Inductor)."""
    torch._dynamo.reset()
    args, kwargs = norm_inputs(op, (4, 48), residual=True)
    fn = norm_fn(op, backend)
    compiled = torch.compile(lambda *a, **k: fn(*a, **k), fullgraph=True, backend="aot_eager")
    check_against_reference(compiled, reference_fn(op), *args, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs: the same error, naming the argument, from every backend
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op,backend", CASES)
def test_bad_inputs(op, backend):
    fn = norm_fn(op, backend)
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="`normalized_shape`"):
        fn(x, 7)
    with pytest.raises(ValueError, match="`normalized_shape`"):
        fn(x, (3, 4, 8))
    with pytest.raises(TypeError, match="`normalized_shape`"):
        fn(x, "8")
    with pytest.raises(ValueError, match="`weight` has shape"):
        fn(x, 8, torch.randn(7))
    with pytest.raises(ValueError, match="`weight` has dtype"):
        fn(x, 8, torch.randn(8, dtype=torch.float64))
    with pytest.raises(ValueError, match="`residual` has shape"):
        fn(x, 8, residual=torch.randn(4, 7))
    with pytest.raises(ValueError, match="`residual` has dtype"):
        fn(x, 8, residual=torch.randn(4, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="`x` has dtype"):
        fn(torch.ones(4, 8, dtype=torch.int32), 8)
    with pytest.raises(TypeError, match="`x`"):
        fn([1.0, 2.0], 2)
    for eps in (-1.0, float("inf"), float("nan"), True, "1e-5"):  # the rule of every op's scalars: finite, >= 0
        with pytest.raises(ValueError, match=r"argument `eps` must be a real number \(finite, >= 0\)"):
            fn(x, 8, None, eps) if op == "rms_norm" else fn(x, 8, None, None, eps)
    if op == "layer_norm":
        with pytest.raises(ValueError, match="`bias` has shape"):
            fn(x, 8, None, torch.randn(9))
    with pytest.raises(ValueError, match="`backend`"):
        getattr(kernels, op)(x, 8, backend="cudnn")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_bad_device():
    x = torch.randn(4, 8, device="cuda")
    with pytest.raises(ValueError, match="`weight` is on cpu"):
        kernels.layer_norm(x, 8, torch.randn(8))
    with pytest.raises(ValueError, match="`residual` is on cpu"):
        kernels.rms_norm(x, 8, residual=torch.randn(4, 8))


def test_unsupported_dtype_explicit_backend_raises_and_auto_falls_back():
    x = torch.randn(4, 8, dtype=torch.float16)
    if "native" in backends_for("layer_norm", "cpu"):
        with pytest.raises(kernels.BackendError, match="`x` has dtype float16"):
            kernels.layer_norm(x, 8, backend="native")
    torch.testing.assert_close(kernels.layer_norm(x.float(), 8), reference.layer_norm(x.float(), 8))


def test_native_checks_name_the_argument():
    if "native" not in backends_for("layer_norm", "cpu"):
        pytest.skip("kernels._C without layer_norm")
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="`weight` has shape"):
        torch.ops.kernels.layer_norm_forward(x, None, torch.randn(7), None, 1e-5, False)
    with pytest.raises(ValueError, match="`residual` has shape"):
        torch.ops.kernels.layer_norm_forward(x, torch.randn(4, 7), None, None, 1e-5, False)
    with pytest.raises(ValueError, match="`x` must have 2 dimensions"):
        torch.ops.kernels.layer_norm_forward(x[0], None, None, None, 1e-5, False)


# ----------------------------------------------------------------------------------------------------------------------
# Negative control: the checker used above fails a deliberately wrong variant
# ----------------------------------------------------------------------------------------------------------------------

def test_negative_control_wrong_variance():
    def biased_std(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, residual=None):
        # Wrong: the unbiased variance (divides by N - 1).
        h = x if residual is None else x + residual
        mean = h.mean(-1, keepdim=True)
        y = (h - mean) / torch.sqrt(h.var(-1, keepdim=True, unbiased=True) + eps) * weight + bias
        return y if residual is None else (y, h)

    args, kwargs = norm_inputs("layer_norm", (8, 64), residual=True)
    with pytest.raises(AssertionError):
        check_against_reference(biased_std, reference.layer_norm, *args, **kwargs)


def test_negative_control_missing_residual_gradient():
    class DropsResidualGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h):
            return h.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * 0.5  # wrong: h = x + residual passes its gradient through unchanged

    def wrong(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, residual=None):
        h = DropsResidualGrad.apply(x + residual)
        return reference.layer_norm(h, normalized_shape, weight, bias, eps), h

    args, kwargs = norm_inputs("layer_norm", (8, 64), residual=True)
    with pytest.raises(AssertionError, match="gradient"):
        check_against_reference(wrong, reference.layer_norm, *args, **kwargs)
