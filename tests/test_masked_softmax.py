"""kernels.masked_softmax on every backend usable here (torch, native on CPU, triton under the interpreter), held to the
same cases: the tolerance rule against the fp64 reference for outputs and gradients, every mask kind and broadcast
pattern, causal masking, fully masked rows, properties, bad inputs, torch.library checks and a negative control."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import BackendError, reference
from kernels.testing import assert_close, available_devices, backends_for, check_against_reference

OP = "masked_softmax"
DEVICES = available_devices()
BACKENDS = [(device, backend) for device in DEVICES for backend in ["torch"] + backends_for(OP, device)]
IDS = [f"{d}-{b}" for d, b in BACKENDS]
# Dtypes served per (device, backend); cases in other dtypes are skipped for that backend.
SERVED = {(d, b): impl.dtypes.get(d, ()) for d in DEVICES for b, impl in kernels._backend.implementations(OP).items()}
# bf16 arithmetic is garbage under the Triton interpreter (testing.md): low precision on the CPU tier is fp16.
LOW = torch.float16 if DEVICES == ["cpu"] else torch.bfloat16


def _skip_unserved(device, backend, dtype):
    if dtype not in SERVED[(device, backend)]:
        pytest.skip(f"backend {backend!r} does not serve {dtype} on {device}")


def _call(backend):
    def fn(x, mask=None, scale=1.0, is_causal=False):
        return kernels.masked_softmax(x, mask, scale=scale, is_causal=is_causal, backend=backend)
    return fn


def _ref(x, mask=None, scale=1.0, is_causal=False):
    return reference.masked_softmax(x, mask, scale, is_causal)


def _mask(kind, shape, device, dtype, p_keep=0.7):
    """A random mask of ``shape``: bool keep-mask, or additive floating with -inf where masked."""
    keep = torch.rand(shape, device=device) < p_keep
    if kind == "bool":
        return keep
    return torch.randn(shape, device=device, dtype=dtype).masked_fill(~keep, float("-inf"))


def _x(shape, device, dtype, magnitude=3.0):
    return (torch.randn(shape, device=device, dtype=torch.float32) * magnitude).to(dtype).requires_grad_(True)


# ----------------------------------------------------------------------------------------------------------------------
# Against the reference
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, LOW], ids=str)
@pytest.mark.parametrize("sk", [1, 17, 113, 203, 1023])
def test_no_mask(device, backend, dtype, sk):
    _skip_unserved(device, backend, dtype)
    x = _x((2, 3, 5, sk), device, dtype)
    check_against_reference(_call(backend), _ref, x, None, 0.37)


MASK_SHAPES = {  # x is (B, H, Sq, Sk) = (2, 3, 7, Sk)
    "padding (B,1,1,Sk)": (2, 1, 1, None),
    "per query (1,1,Sq,Sk)": (1, 1, 7, None),
    "2-d (Sq,Sk)": (7, None),
    "1-d (Sk,)": (None,),
    "per head (1,H,Sq,Sk)": (1, 3, 7, None),
    "batch-and-query (B,1,Sq,Sk)": (2, 1, 7, None),
    "full (B,H,Sq,Sk)": (2, 3, 7, None),
}


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("pattern", list(MASK_SHAPES))
def test_mask_kinds_and_broadcasts(device, backend, kind, pattern):
    dtype, sk = torch.float32, 113
    x = _x((2, 3, 7, sk), device, dtype)
    shape = tuple(sk if s is None else s for s in MASK_SHAPES[pattern])
    mask = _mask(kind, shape, device, dtype)
    check_against_reference(_call(backend), _ref, x, mask, 0.5)


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("pattern", ["padding (B,1,1,Sk)", "per query (1,1,Sq,Sk)"])
def test_long_rows(device, backend, kind, pattern):
    """Rows longer than one block take the looped kernels (online max and sum, then a writing pass)."""
    dtype, sk = torch.float32, 1023
    x = _x((2, 3, 3, sk), device, dtype)
    shape = tuple(sk if s is None else (3 if s == 7 else s) for s in MASK_SHAPES[pattern])
    mask = _mask(kind, shape, device, dtype)
    check_against_reference(_call(backend), _ref, x, mask, 0.5, True)


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_low_precision_with_mask(device, backend, kind):
    _skip_unserved(device, backend, LOW)
    x = _x((2, 3, 9, 203), device, LOW)
    mask = _mask(kind, (2, 1, 1, 203), device, LOW)
    check_against_reference(_call(backend), _ref, x, mask, 0.125)


@pytest.mark.parametrize("backend", [b for d, b in BACKENDS if d == "cpu" and b != "triton"])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_bf16_on_cpu(backend, kind):
    """bf16 on the CPU (the native kernel serves it; the Triton interpreter cannot compute in bf16)."""
    x = _x((2, 3, 9, 203), "cpu", torch.bfloat16)
    mask = _mask(kind, (2, 1, 1, 203), "cpu", torch.bfloat16)
    check_against_reference(_call(backend), _ref, x, mask, 0.125, True)


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS, ids=IDS)
def test_mask_gradient(device, backend):
    """A floating mask that requires grad gets the gradient of the scores, summed over its broadcast dimensions."""
    x = _x((2, 3, 5, 37), device, torch.float32)
    mask = torch.randn(1, 3, 1, 37, device=device).requires_grad_(True)
    check_against_reference(_call(backend), _ref, x, mask, 0.8)


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("sq,sk", [(7, 7), (5, 19), (19, 5), (3, 1023), (1, 1)])
def test_causal(device, backend, sq, sk):
    x = _x((2, 2, sq, sk), device, torch.float32)
    check_against_reference(_call(backend), _ref, x, None, 0.6, True)


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("sq,sk", [(9, 13), (13, 9)])
def test_causal_with_padding_mask(device, backend, kind, sq, sk):
    x = _x((3, 2, sq, sk), device, torch.float32)
    mask = _mask(kind, (3, 1, 1, sk), device, torch.float32)
    mask[0, ..., 0] = True if kind == "bool" else float("-inf")  # row 0 of batch 0 is then fully masked
    check_against_reference(_call(backend), _ref, x, mask, 1.0, True)


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("shape,mask_shape", [
    ((37,), (37,)),                    # one row
    ((6, 37), (6, 1)),                 # mask broadcast along the softmax dimension (stride 0 there)
    ((4, 6, 37), (4, 1, 37)),          # 3-d, no heads
    ((2, 3, 2, 4, 37), (2, 1, 1, 4, 37)),  # 5-d, (B, G, H, Sq, Sk) with a mask broadcast over two dims
    ((2, 3, 4, 5, 37), (2, 1, 4, 1, 37)),  # 5-d with broadcast dims interleaved
])
def test_leading_shapes(device, backend, shape, mask_shape):
    x = _x(shape, device, torch.float32)
    mask = _mask("bool", mask_shape, device, torch.float32, p_keep=0.8)
    mask.view(-1)[0] = True
    try:
        check_against_reference(_call(backend), _ref, x, mask, 1.3)
    except BackendError as error:  # the Triton kernel reads two coalesced leading dims; it must say so
        assert backend == "triton" and "`mask`" in str(error)


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS, ids=IDS)
def test_non_contiguous_inputs(device, backend):
    base = torch.randn(2, 3, 40, 22, device=device)
    x = base.transpose(-1, -2)[..., ::2].detach().requires_grad_(True)  # (2, 3, 22, 20), neither dim unit-stride
    assert not x.is_contiguous()
    mask = (torch.rand(2, 20, 22, device=device) < 0.7).transpose(-1, -2)[:, None]  # (2, 1, 22, 20) transposed
    check_against_reference(_call(backend), _ref, x, mask, 0.9)
    xs = torch.randn(4, 50, device=device)[::2, ::3].detach().requires_grad_(True)
    check_against_reference(_call(backend), _ref, xs, None, 1.0)


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("shape", [(0, 5), (2, 0, 7), (3, 4, 0)])
def test_empty(device, backend, shape):
    x = torch.randn(shape, device=device, requires_grad=True)
    y = kernels.masked_softmax(x, None, is_causal=len(shape) > 1, backend=backend)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


# ----------------------------------------------------------------------------------------------------------------------
# Fully masked rows, extreme masks and magnitudes, properties
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("sk", [17, 1023])
def test_fully_masked_rows_give_zeros_and_zero_gradients(device, backend, kind, sk):
    x = _x((2, 3, 4, sk), device, torch.float32)
    keep = torch.rand(2, 1, 4, sk, device=device) < 0.6
    keep[0, 0, 1] = False
    keep[1, 0, 3] = False
    mask = keep if kind == "bool" else torch.zeros(keep.shape, device=device).masked_fill(~keep, float("-inf"))
    check_against_reference(_call(backend), _ref, x, mask, 1.0)
    y = _call(backend)(x, mask)
    assert not torch.isnan(y).any()
    assert torch.equal(y[0, :, 1], torch.zeros_like(y[0, :, 1]))
    assert torch.equal(y[1, :, 3], torch.zeros_like(y[1, :, 3]))
    y.backward(torch.randn_like(y))
    assert not torch.isnan(x.grad).any()
    assert torch.equal(x.grad[0, :, 1], torch.zeros_like(x.grad[0, :, 1]))


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, LOW], ids=str)
def test_large_finite_additive_mask(device, backend, dtype):
    """A large finite negative mask (finfo.min, the usual HF-style padding) masks like -inf where a row keeps some
    element, and gives a uniform row (not NaN) where every element carries it, as plain PyTorch does."""
    _skip_unserved(device, backend, dtype)
    x = _x((2, 2, 6, 45), device, dtype)
    keep = torch.rand(2, 1, 1, 45, device=device) < 0.6
    keep[1, ..., :] = False  # batch 1: every element carries the large negative value
    mask = torch.zeros(keep.shape, device=device, dtype=dtype).masked_fill(~keep, torch.finfo(dtype).min)
    y = check_against_reference(_call(backend), _ref, x, mask, 1.0)
    assert torch.isfinite(y).all()


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("magnitude", [5.0, 100.0])
def test_large_magnitudes_low_precision(device, backend, magnitude):
    _skip_unserved(device, backend, LOW)
    x = _x((2, 2, 8, 203), device, LOW, magnitude=magnitude)
    mask = _mask("bool", (2, 1, 1, 203), device, LOW)
    y = check_against_reference(_call(backend), _ref, x, mask, 1.0)
    assert torch.isfinite(y).all()


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("sk", [113, 1023])
def test_rows_sum_to_one_and_shift_invariance(device, backend, sk):
    x = torch.randn(3, 5, sk, device=device) * 4
    mask = _mask("bool", (3, 1, sk), device, torch.float32)
    mask[..., 0] = True
    fn = _call(backend)
    y = fn(x, mask, 0.3, True)
    assert_close(y.sum(-1), torch.ones(3, 5, dtype=torch.float64, device=device), atol=1e-5)
    shifted = fn(x + 7.0, mask, 0.3, True)  # scale * (x + c) = scale * x + 0.3 c per row
    assert_close(shifted, y.double(), atol=2e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs: the same error from every backend, naming the argument
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device,backend", BACKENDS, ids=IDS)
def test_bad_inputs(device, backend):
    fn = _call(backend)
    x = torch.randn(2, 3, 4, 5, device=device)
    with pytest.raises(ValueError, match="argument `mask` has shape \\(2, 3\\).*does not broadcast"):
        fn(x, torch.ones(2, 3, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match="argument `mask` has dtype torch.int64"):
        fn(x, torch.ones(5, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match="argument `mask` has dtype torch.float64.*torch.float32"):
        fn(x, torch.zeros(5, dtype=torch.float64, device=device))
    with pytest.raises(ValueError, match="argument `mask` is on meta"):
        fn(x, torch.ones(5, dtype=torch.bool, device="meta"))
    with pytest.raises(TypeError, match="argument `mask` must be a tensor"):
        fn(x, [True] * 5)
    with pytest.raises(TypeError, match="argument `x` must be a tensor"):
        fn([1.0, 2.0])
    with pytest.raises(ValueError, match="argument `x` has dtype torch.int64"):
        fn(torch.ones(3, 4, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match="argument `is_causal` needs `x` with at least 2 dimensions"):
        fn(torch.randn(5, device=device), None, 1.0, True)
    with pytest.raises(TypeError, match="argument `scale` must be a real number"):
        fn(x, None, torch.tensor(2.0))
    with pytest.raises(ValueError, match="argument `backend` must be one of"):
        kernels.masked_softmax(x, backend="cuda")


def test_explicit_backend_that_cannot_serve_names_the_argument():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    if "triton" in backends_for(OP, "cpu"):
        with pytest.raises(BackendError, match="argument `x` has dtype float64"):
            kernels.masked_softmax(x, backend="triton")
        x32 = torch.randn(2, 3, 4, 5, 6)
        mask = torch.ones(2, 1, 4, 1, 6, dtype=torch.bool)  # broadcast over dims 1 and 3: three leading groups
        with pytest.raises(BackendError, match="argument `mask`"):
            kernels.masked_softmax(x32, mask, backend="triton")


def test_auto_picks_native_on_cpu_when_built():
    from kernels._backend import select

    x = torch.randn(2, 5)
    chosen = select(OP, "auto", device=x.device, dtype=x.dtype, x=x, mask=None).backend
    assert chosen == ("native" if "native" in backends_for(OP, "cpu") else "torch")


# ----------------------------------------------------------------------------------------------------------------------
# Negative control: deliberately wrong variants must fail the checker used above
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS, ids=IDS)
def test_negative_control(device, backend):
    x = _x((2, 3, 6, 33), device, torch.float32)
    mask = _mask("bool", (2, 1, 1, 33), device, torch.float32)
    fn = _call(backend)
    with pytest.raises(AssertionError):  # mask ignored
        check_against_reference(lambda x, m, s: fn(x, None, s), _ref, x, mask, 0.5)
    with pytest.raises(AssertionError):  # scale ignored
        check_against_reference(lambda x, m, s: fn(x, m, 1.0), _ref, x, mask, 0.5)
    with pytest.raises(AssertionError):  # causal bottom-right aligned instead of top-left (Sq != Sk)
        bottom_right = torch.ones(6, 33, dtype=torch.bool, device=device).tril(33 - 6)
        check_against_reference(lambda x, m, s, c: fn(x, bottom_right, s), _ref, x, None, 1.0, True)


# ----------------------------------------------------------------------------------------------------------------------
# torch.library: opcheck, gradcheck, torch.compile
# ----------------------------------------------------------------------------------------------------------------------

def _ops_here():
    ops = []
    for _, backend in BACKENDS:
        if backend == "triton":
            ops.append((torch.ops.kernels.triton_masked_softmax_forward, torch.ops.kernels.triton_masked_softmax_backward))
        elif backend == "native":
            ops.append((torch.ops.kernels.masked_softmax_forward, torch.ops.kernels.masked_softmax_backward))
    return ops


@pytest.mark.interpret
@pytest.mark.parametrize("ops", _ops_here(), ids=lambda ops: ops[0].__name__)
def test_opcheck(ops):
    forward, backward = ops
    x = torch.randn(2, 3, 5, 19, requires_grad=True)
    padding = torch.rand(2, 1, 1, 19) < 0.7
    additive = torch.randn(1, 1, 5, 19, requires_grad=True)
    for args in [(x, padding, 0.5, True), (x, additive, 1.0, False)]:
        torch.library.opcheck(forward, args)
    y = forward(x.detach(), padding, 0.5, False)
    torch.library.opcheck(backward, (torch.randn_like(y), y, 0.5))


@pytest.mark.skipif("native" not in backends_for(OP, "cpu"), reason="kernels._C without masked_softmax")
@pytest.mark.parametrize("causal", [False, True])
def test_native_gradcheck_fp64(causal):
    x = torch.randn(2, 2, 5, 7, dtype=torch.float64, requires_grad=True)
    mask = torch.randn(2, 1, 1, 7, dtype=torch.float64, requires_grad=True)
    fn = _call("native")
    assert torch.autograd.gradcheck(lambda x, m: fn(x, m, 0.7, causal), (x, mask))
    keep = torch.rand(2, 1, 5, 7) < 0.6
    assert torch.autograd.gradcheck(lambda x: fn(x, keep, 1.3, causal), (x,))


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", [b for b in BACKENDS if b[1] != "torch"], ids=lambda v: str(v))
def test_torch_compile_fullgraph(device, backend):
    """The op traces without graph breaks, forward and backward (aot_eager on the CPU tier; inductor on the GPU)."""
    compile_backend = "inductor" if device == "cuda" else "aot_eager"

    def f(x, mask):
        return kernels.masked_softmax(x * 2.0, mask, scale=0.5, is_causal=True, backend=backend).sum(-2)

    compiled = torch.compile(f, fullgraph=True, backend=compile_backend)
    x = torch.randn(2, 3, 6, 40, device=device, requires_grad=True)
    mask = torch.rand(2, 1, 1, 40, device=device) < 0.8
    out = compiled(x, mask)
    assert_close(out, _ref(x.detach().double() * 2.0, mask, 0.5, True).sum(-2))
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------------------------------------------------
# GPU tier
# ----------------------------------------------------------------------------------------------------------------------

GPU_BACKENDS = ["native", "triton"]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("sk", [1, 128, 1000, 4096, 16384, 16385, 65536, 70001])
def test_gpu_realistic(backend, dtype, sk):
    rows = max(1, min(2048, 2**23 // sk))
    x = _x((2, rows, sk), "cuda", dtype)
    mask = _mask("bool", (2, 1, sk), "cuda", dtype)
    check_against_reference(_call(backend), _ref, x, mask, 0.125)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_gpu_attention_shapes(backend, kind):
    x = _x((4, 12, 512, 512), "cuda", torch.bfloat16)
    mask = _mask(kind, (4, 1, 1, 512), "cuda", torch.bfloat16)
    check_against_reference(_call(backend), _ref, x, mask, 0.125, True)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_determinism(backend):
    x = torch.randn(8, 16, 256, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    mask = _mask("bool", (8, 1, 1, 1024), "cuda", torch.bfloat16)
    fn = _call(backend)
    y0 = fn(x, mask, 0.1, True)
    dy = torch.randn_like(y0)
    (g0,) = torch.autograd.grad(y0, x, dy)
    for _ in range(50):
        y = fn(x, mask, 0.1, True)
        (g,) = torch.autograd.grad(y, x, dy)
        assert torch.equal(y, y0) and torch.equal(g, g0)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_cuda_graph(backend):
    x = torch.randn(4, 8, 128, 300, device="cuda", dtype=torch.float16)
    mask = _mask("bool", (4, 1, 1, 300), "cuda", torch.float16)
    fn = _call(backend)
    fn(x, mask, 0.5)  # warm-up (Triton compiles here)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = fn(x, mask, 0.5)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, fn(x, mask, 0.5))
