"""The layer-norm GPU tier (marker `gpu`): bf16 and realistic sizes against the reference, non-contiguous inputs and
large magnitudes, deterministic backward, torch.compile (inductor) and CUDA graphs, on the native and Triton
backends."""

import pytest
import torch
from _layer_norm_cases import EPS, OPS, norm_fn, norm_inputs, reference_fn

from kernels.testing import backends_for, check_against_reference

GPU_BACKENDS = ["native", "triton"]


def _gpu_backend(op, backend):
    if backend not in backends_for(op, "cuda"):
        pytest.skip(f"backend {backend} not usable on cuda here")


@pytest.mark.gpu
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(4096, 768), (2048, 1024), (1024, 4096), (512, 8192), (64, 16384), (8, 65536),
                                   (333, 1000), (77, 127), (16, 1)])
def test_gpu_realistic(op, backend, dtype, shape):
    _gpu_backend(op, backend)
    # fp32 on a GPU is compared with an fp32 reference (testing.md): the fixed table then measures reduction order
    # (dweight sums thousands of rows, a row sums up to 65536 elements), so fp32 gets a documented wider table.
    tolerance = dict(atol=1e-4, rtol=1e-4, grad_atol=1e-3, grad_rtol=1e-4) if dtype == torch.float32 else {}
    args, kwargs = norm_inputs(op, shape, dtype=dtype, device="cuda", residual=True)
    check_against_reference(norm_fn(op, backend), reference_fn(op), *args, **tolerance, **kwargs)
    args, kwargs = norm_inputs(op, shape, dtype=dtype, device="cuda", bias=False)
    check_against_reference(norm_fn(op, backend), reference_fn(op), *args, **tolerance, **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_non_contiguous_and_large_magnitudes(op, backend):
    _gpu_backend(op, backend)
    x = (torch.randn(1024, 2048, device="cuda", dtype=torch.float16) * 50)[:, ::2].requires_grad_()
    residual = torch.randn(1024, 1024, device="cuda", dtype=torch.float16).t().requires_grad_()
    w = torch.randn(1024, device="cuda", dtype=torch.float16, requires_grad=True)
    args = (x, 1024, w, None, EPS) if op == "layer_norm" else (x, 1024, w, EPS)
    check_against_reference(norm_fn(op, backend), reference_fn(op), *args, residual=residual)


@pytest.mark.gpu
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backward_deterministic(op, backend):
    _gpu_backend(op, backend)
    args, kwargs = norm_inputs(op, (32768, 1024), dtype=torch.bfloat16, device="cuda", residual=True)
    y, h = norm_fn(op, backend)(*args, **kwargs)
    dy, dh = torch.randn_like(y), torch.randn_like(h)
    leaves = [t for t in (args[0], kwargs["residual"], args[2]) if t is not None]
    first = torch.autograd.grad((y, h), leaves, (dy, dh), retain_graph=True)
    for _ in range(50):
        again = torch.autograd.grad((y, h), leaves, (dy, dh), retain_graph=True)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.gpu
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_torch_compile_inductor(op, backend):
    _gpu_backend(op, backend)
    torch._dynamo.reset()
    args, kwargs = norm_inputs(op, (256, 1024), dtype=torch.bfloat16, device="cuda", residual=True)
    fn = norm_fn(op, backend)
    compiled = torch.compile(lambda *a, **k: fn(*a, **k), fullgraph=True)
    check_against_reference(compiled, reference_fn(op), *args, **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_cuda_graph(op, backend):
    _gpu_backend(op, backend)
    args, _ = norm_inputs(op, (512, 2048), dtype=torch.bfloat16, device="cuda")
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    residual = torch.randn(512, 2048, device="cuda", dtype=torch.bfloat16)
    fn = norm_fn(op, backend)
    fn(*args, residual=residual)  # warm-up (compiles the Triton kernel) outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y, h = fn(*args, residual=residual)
    args[0].copy_(torch.randn_like(args[0]))
    graph.replay()
    torch.cuda.synchronize()
    expected_y, expected_h = fn(*args, residual=residual)
    assert torch.equal(y, expected_y) and torch.equal(h, expected_h)
