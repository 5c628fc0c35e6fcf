"""The attention GPU tier: the cases of tests/test_attention.py at realistic sizes in bf16/fp16, the TF32 tolerance,
grids past 65535, determinism, dropout statistics, torch.compile and CUDA graphs, memory linear in the length."""

from __future__ import annotations

import functools

import pytest
import torch
from _attention_cases import FAST, attention, check, ids, keep_mask_for_next_call, qkv

import kernels
from kernels import reference
from kernels.testing import check_against_reference

GPU_FAST = [case for case in FAST if case[0] == "cuda"]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_FAST, ids=ids)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("mask", ["none", "causal", "padding", "bool", "additive"])
def test_gpu_realistic(case, dtype, head_dim, mask):
    device, backend = case
    q, k, v = qkv(2, 8, 1023, 1023, head_dim, device=device, dtype=dtype, kv_heads=2)
    kwargs = {"enable_gqa": True}
    if mask == "causal":
        kwargs["is_causal"] = True
    elif mask == "padding":
        padding = torch.zeros(2, 1023, dtype=torch.bool, device=device)
        padding[1, 700:] = True
        kwargs["key_padding_mask"] = padding
    elif mask == "bool":
        kwargs["attn_mask"] = torch.rand(1023, 1023, device=device) > 0.2
    elif mask == "additive":
        kwargs["attn_mask"] = torch.randn(2, 1, 1023, 1023, device=device, dtype=dtype)
    check(backend, q, k, v, **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_FAST, ids=ids)
def test_gpu_fp32_tf32_tolerance(case):
    """fp32 inputs use TF32 dots on GPUs: documented tolerance 2e-3 absolute + 2e-3 relative at O(1) values."""
    device, backend = case
    check(backend, *qkv(2, 4, 203, 203, 64, device=device), is_causal=True, atol=2e-3, rtol=2e-3,
          grad_atol=1e-2, grad_rtol=1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_FAST, ids=ids)
def test_gpu_more_batch_heads_than_a_grid_axis_of_65535(case):
    """B x H = 65664 decode-size rows: the (batch, head) pairs take grid axis 0 (axes 1 and 2 stop at 65535)."""
    device, backend = case
    q, k, v = qkv(2052, 32, 1, 24, 64, device=device, dtype=torch.bfloat16)
    check_against_reference(functools.partial(attention, backend), reference.scaled_dot_product_attention, q, k, v)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_FAST, ids=ids)
def test_gpu_deterministic_50x(case):
    device, backend = case
    q, k, v = qkv(4, 16, 1024, 1024, 128, device=device, dtype=torch.bfloat16, kv_heads=4)
    grad = torch.randn(4, 16, 1024, 128, device=device, dtype=torch.bfloat16)
    first = torch.autograd.grad(attention(backend, q, k, v, is_causal=True, enable_gqa=True), (q, k, v), grad)
    for _ in range(50):
        again = torch.autograd.grad(attention(backend, q, k, v, is_causal=True, enable_gqa=True), (q, k, v), grad)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_FAST, ids=ids)
def test_gpu_dropout_statistics_and_reference(case):
    device, backend = case
    q, k, v = qkv(2, 4, 203, 203, 64, device=device, dtype=torch.bfloat16)
    keep = keep_mask_for_next_call(5, (2, 4, 203, 203), 0.2, device)
    assert abs(keep.float().mean().item() - 0.8) < 0.01
    check(backend, q, k, v, dropout_p=0.2, dropout_mask=keep)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_FAST, ids=ids)
def test_gpu_compile_and_cuda_graph(case):
    device, backend = case
    q, k, v = qkv(2, 8, 512, 512, 64, device=device, dtype=torch.bfloat16, grad=False)
    padding = torch.zeros(2, 512, dtype=torch.bool, device=device)
    padding[0, 400:] = True

    def step(q, k, v):
        return kernels.scaled_dot_product_attention(q, k, v, key_padding_mask=padding, backend=backend)

    expected = step(q, k, v)  # also warms up autotuning, which must not run during capture
    compiled = torch.compile(step, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), expected)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step(q, k, v)
    q.normal_()
    graph.replay()
    torch.testing.assert_close(captured, step(q, k, v))


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_FAST, ids=ids)
def test_gpu_memory_linear_in_length(case):
    """No (Sq, Sk) matrix: peak memory of forward + backward grows linearly with the sequence length."""
    device, backend = case
    peaks = []
    for seqlen in (2048, 8192):
        q, k, v = qkv(1, 8, seqlen, seqlen, 128, device=device, dtype=torch.bfloat16)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        attention(backend, q, k, v, is_causal=True).sum().backward()
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    assert peaks[1] < 5 * peaks[0]
