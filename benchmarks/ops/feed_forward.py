"""``--op feed_forward`` (the whole block) and ``--op linear`` (one GEMM with its bias + activation epilogue).

FLOPs per call: a Linear is ``2 * tokens * in * out`` (``out`` doubled for the gated activations' packed ``w1``);
the backward is twice the forward (input and weight gradients), forward+backward three times. The elementwise work
is not counted, so "the epilogue for free" shows as the same TFLOP/s as the plain GEMM. The ``matmul`` provider of
the linear suite is ``torch.mm`` of the same shape without bias or activation: the cuBLAS (or BLAS) reference that
the fused GEMM should match, and that fractions of the measured matmul rate compare against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import kernels
from benchmarks.suite import Case, SuiteConfig, compiled, probe, suite, timed_closure
from kernels import reference


def _shapes(config: SuiteConfig):
    """(tokens, d_model, ffn) triples: tokens 8k-32k, d_model 1024-4096, ffn 4x on a GPU."""
    if config.device.type == "cpu":
        return [(512, 256, 1024)] if config.quick else [(2048, 768, 3072)]
    if config.quick:
        return [(8192, 1024, 4096)]
    return [(8192, 1024, 4096), (16384, 2048, 8192), (32768, 4096, 16384), (8192, 4096, 16384)]


def _eager_activation(name):
    return lambda h: reference.activate(h, name)


def _ours(call, inputs, mode):
    def setup():
        probe(call)
        return timed_closure(call, inputs, mode)
    return setup


@suite("feed_forward")
def block_cases(config: SuiteConfig):
    activations = ["gelu"] if config.quick else ["gelu", "swiglu"]
    for tokens, d_model, ffn in _shapes(config):
        for activation in activations:
            for dropout_p in ([0.0] if config.quick or config.device.type == "cpu" else [0.0, 0.1]):
                yield from _block_cases(config, tokens, d_model, ffn, activation, dropout_p)


def _block_cases(config, tokens, d_model, ffn, activation, dropout_p):
    device, dtype = config.device, config.dtype
    width = 2 * ffn if activation in reference.GATED_ACTIVATIONS else ffn
    x = torch.randn(tokens, d_model, device=device, dtype=dtype, requires_grad=True)
    residual = torch.randn_like(x, requires_grad=True)
    w1 = (torch.randn(width, d_model, device=device) * d_model ** -0.5).to(dtype).requires_grad_()
    b1 = torch.zeros(width, device=device, dtype=dtype).normal_().requires_grad_()
    w2 = (torch.randn(d_model, ffn, device=device) * ffn ** -0.5).to(dtype).requires_grad_()
    b2 = torch.zeros(d_model, device=device, dtype=dtype).normal_().requires_grad_()
    inputs = [x, w1, b1, w2, b2, residual]
    act = _eager_activation(activation)

    def eager_block(x, w1, b1, w2, b2, residual):
        h = F.dropout(act(F.linear(x, w1, b1)), dropout_p, training=dropout_p > 0)
        return residual + F.linear(h, w2, b2)

    forward_flops = 2 * tokens * d_model * width + 2 * tokens * ffn * d_model
    for mode in config.modes:
        def eager(mode=mode):
            return timed_closure(lambda: eager_block(*inputs), inputs, mode)

        def torch_compile(mode=mode):
            block = compiled(eager_block)
            return timed_closure(lambda: block(*inputs), inputs, mode)

        def ours(backend, mode=mode):
            call = lambda: kernels.feed_forward(x, w1, b1, w2, b2, activation=activation,  # noqa: E731
                                                dropout_p=dropout_p, residual=residual, backend=backend)
            return _ours(call, inputs, mode)

        yield Case(
            op="feed_forward", mode=mode, shape={"tokens": tokens, "d_model": d_model, "ffn": ffn}, dtype=dtype,
            device=device, flops=forward_flops * {"fwd": 1, "bwd": 2, "fwd+bwd": 3}[mode],
            label=f"{activation}" + (f" dropout {dropout_p}" if dropout_p else ""),
            providers={"eager": eager, "torch.compile": torch_compile, "triton": ours("triton"),
                       "native": ours("native")},
        )


@suite("linear")
def linear_cases(config: SuiteConfig):
    activations = [None, "gelu"] if config.quick else [None, "gelu", "gelu_tanh", "swiglu"]
    for tokens, d_model, ffn in _shapes(config):
        for activation in activations:
            yield from _linear_cases(config, tokens, d_model, ffn, activation)


def _linear_cases(config, tokens, d_in, d_out, activation):
    device, dtype = config.device, config.dtype
    width = 2 * d_out if activation in reference.GATED_ACTIVATIONS else d_out
    x = torch.randn(tokens, d_in, device=device, dtype=dtype, requires_grad=True)
    weight = (torch.randn(width, d_in, device=device) * d_in ** -0.5).to(dtype).requires_grad_()
    bias = torch.randn(width, device=device, dtype=dtype, requires_grad=True)
    inputs = [x, weight, bias]
    act = _eager_activation(activation)
    forward_flops = 2 * tokens * d_in * width
    for mode in config.modes:
        def eager(mode=mode):
            return timed_closure(lambda: act(F.linear(x, weight, bias)), inputs, mode)

        def torch_compile(mode=mode):
            fn = compiled(lambda x, w, b: act(F.linear(x, w, b)))
            return timed_closure(lambda: fn(x, weight, bias), inputs, mode)

        def matmul(mode=mode):
            return timed_closure(lambda: torch.mm(x, weight.t()), [x, weight], mode)

        def ours(backend, mode=mode):
            call = lambda: kernels.linear(x, weight, bias, activation=activation, backend=backend)  # noqa: E731
            return _ours(call, inputs, mode)

        yield Case(
            op="linear", mode=mode, shape={"tokens": tokens, "in": d_in, "out": d_out}, dtype=dtype, device=device,
            flops=forward_flops * {"fwd": 1, "bwd": 2, "fwd+bwd": 3}[mode], label=str(activation),
            providers={"eager": eager, "torch.compile": torch_compile, "matmul": matmul, "triton": ours("triton"),
                       "native": ours("native")},
        )
