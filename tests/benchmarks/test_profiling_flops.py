"""benchmarks.profiling.flops: the FLOP formulas of the package's ops agree with torch's count of the same work."""

import pytest
import torch
import torch.nn.functional as F

import kernels
from benchmarks.profiling.flops import count_step_flops, custom_formulas


def test_formulas_cover_the_ops_that_do_matmul_work():
    names = {str(packet) for packet in custom_formulas()}
    for name in ("kernels.linear_forward", "kernels.native_linear", "kernels.native_feed_forward",
                 "kernels.attention_forward", "kernels.linear_weight_grad", "kernels.triton_matmul"):
        assert name in names
    assert "kernels.layer_norm_forward" not in names  # elementwise work is not counted


@pytest.mark.parametrize("backend", ["native", "triton"])
@pytest.mark.parametrize("grad", [False, True])
def test_linear_counts_as_torch_linear(backend, grad):
    x = torch.randn(6, 10, requires_grad=grad)
    weight = torch.randn(12, 10, requires_grad=grad)
    bias = torch.randn(12, requires_grad=grad)

    def ours():
        out = kernels.linear(x, weight, bias, activation="gelu", backend=backend)
        if grad:
            out.sum().backward()

    def reference():
        out = F.gelu(F.linear(x, weight, bias))
        if grad:
            out.sum().backward()

    expected = count_step_flops(reference)
    assert expected == 2 * 6 * 10 * 12 * (3 if grad else 1)
    assert count_step_flops(ours) == expected


@pytest.mark.parametrize("backend", ["native", "triton"])
@pytest.mark.parametrize("grad", [False, True])
def test_gated_weights_held_apart_count_both_projections(backend, grad):
    x = torch.randn(4, 8, requires_grad=grad)
    gate, up = torch.randn(6, 8, requires_grad=grad), torch.randn(6, 8, requires_grad=grad)
    w2 = torch.randn(8, 6, requires_grad=grad)

    def ours():
        out = kernels.feed_forward(x, (gate, up), None, w2, None, activation="swiglu", backend=backend)
        hidden = kernels.linear(x, (gate, up), None, activation="swiglu", backend=backend)
        if grad:
            (out.sum() + hidden.sum()).backward()

    def reference():
        hidden = F.silu(F.linear(x, gate)) * F.linear(x, up)
        out = F.linear(hidden, w2)
        if grad:
            (out.sum() + hidden.sum()).backward()

    expected = count_step_flops(reference)
    assert count_step_flops(ours) == expected + 2 * 4 * (2 * 6 * 8) * (3 if grad else 1)  # + kernels.linear's


@pytest.mark.parametrize("grad", [False, True])
def test_feed_forward_counts_both_gemms(grad):
    x = torch.randn(5, 8, requires_grad=grad)
    w1, w2 = torch.randn(16, 8, requires_grad=grad), torch.randn(8, 16, requires_grad=grad)

    def ours():
        out = kernels.feed_forward(x, w1, None, w2, None, activation="relu", backend="native")
        if grad:
            out.sum().backward()

    assert count_step_flops(ours) == 2 * 5 * (8 * 16 + 16 * 8) * (3 if grad else 1)


def test_attention_counts_as_sdpa():
    b, h, s, d = 2, 3, 7, 8
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for _ in range(3))

    def step():
        kernels.scaled_dot_product_attention(q, k, v, is_causal=True, backend="native").sum().backward()

    def reference():
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    def hand_written():
        scores = (q @ k.transpose(-2, -1)).masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
        (scores.softmax(-1) @ v).sum().backward()

    forward = 4 * b * h * s * s * d
    assert count_step_flops(hand_written) == 3 * forward  # backward: the four GEMMs of the gradients
    assert count_step_flops(reference) == 3 * forward  # torch's CPU flash SDPA, taught here
    assert count_step_flops(step) == 3 * forward


def test_grad_enabled_sees_through_torch_fast_path():
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True).eval()
    x = torch.randn(2, 5, 16)

    def step():
        with torch.no_grad():
            layer(x)

    full = count_step_flops(lambda: layer(x), grad_enabled=True)
    tokens = 2 * 5
    projections = 2 * tokens * (16 * 48 + 16 * 16 + 16 * 32 + 32 * 16)
    assert full == projections + 4 * 2 * 2 * 5 * 5 * 8
    assert count_step_flops(step) < full  # torch's fused inference op is opaque to the counter
