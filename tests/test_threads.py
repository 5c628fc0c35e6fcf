"""The native CPU kernels under threads: four Python threads calling an op at once (different shapes, so the
per-thread scratch of CPU attention is sized differently in each) get the same bits as serial calls, and the
intra-op thread count (``torch.set_num_threads`` 1 / 2 / 8) keeps every result within the tolerance rule and the same
bits run to run for a fixed count. Forward and backward; no dropout (its seed comes from the one global generator)."""

from __future__ import annotations

import functools
import threading

import pytest
import torch

import kernels
from kernels.testing import check_against_reference

pytestmark = pytest.mark.skipif(not kernels._extension.native_available("cpu"), reason="kernels._C is not built")

def _randn(generator, *shape, scale=1.0):
    """A leaf of N(0, scale^2) values; weights take scale = fan_in ** -0.5, as nn.Linear's."""
    return (torch.randn(*shape, generator=generator) * scale).requires_grad_(True)


def _run(fn, inputs):
    """Forward, then the gradient of every floating input for a fixed random output gradient; all results detached."""
    out = fn(*inputs)
    outs = [out] if isinstance(out, torch.Tensor) else [o for o in out if isinstance(o, torch.Tensor)]
    grads_out = [torch.randn(o.shape, generator=torch.Generator().manual_seed(7), dtype=o.dtype) for o in outs]
    grads = torch.autograd.grad(outs, [t for t in inputs if t.requires_grad], grads_out)
    return [t.detach() for t in (*outs, *grads)]


# Each case: (native function, reference function, inputs(generator, size)), where size picks one of four shapes.
def _attention_inputs(generator, size):
    sq, sk, d = [(17, 45, 16), (64, 64, 64), (1, 130, 40), (203, 77, 128)][size]
    return [_randn(generator, 2, 2, sq, d), _randn(generator, 2, 2, sk, d), _randn(generator, 2, 2, sk, d)]


def _attention(q, k, v, backend="native"):
    padding = torch.arange(k.shape[2]) >= k.shape[2] - 3  # the last three keys are padding
    return kernels.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                key_padding_mask=padding.expand(q.shape[0], -1), backend=backend)


def _attention_reference(q, k, v):
    return _attention(q, k, v, backend="torch")


def _varlen_inputs(generator, size):
    lengths = [(3, 17, 1), (64, 64), (130,), (5, 40, 9, 33)][size]
    total = sum(lengths)
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return [_randn(generator, total, 4, 32), _randn(generator, total, 2, 32), _randn(generator, total, 2, 32),
            cu_seqlens]


def _varlen(q, k, v, cu_seqlens, backend="native"):
    longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return kernels.varlen_attention(q, k, v, cu_seqlens, cu_seqlens, longest, longest, is_causal=True,
                                    backend=backend)


def _varlen_reference(q, k, v, cu_seqlens):
    return _varlen(q, k, v, cu_seqlens, backend="torch")


def _softmax_inputs(generator, size):
    shape = [(2, 3, 17, 45), (1, 1, 64, 1000), (4, 2, 1, 7), (2, 2, 113, 203)][size]
    return [_randn(generator, *shape)]


def _softmax(x, backend="native"):
    mask = torch.rand(x.shape[0], 1, 1, x.shape[-1], generator=torch.Generator().manual_seed(3)) > 0.3
    return kernels.masked_softmax(x, mask, scale=0.3, is_causal=True, backend=backend)


def _norm_inputs(generator, size):
    rows, hidden = [(17, 127), (64, 1000), (1, 4096), (203, 768)][size]
    return [_randn(generator, rows, hidden), _randn(generator, rows, hidden), _randn(generator, hidden),
            _randn(generator, hidden)]


def _layer_norm(x, residual, weight, bias, backend="native"):
    return kernels.layer_norm(x, x.shape[-1:], weight, bias, residual=residual, backend=backend)


def _rms_norm_inputs(generator, size):
    return _norm_inputs(generator, size)[:3]


def _rms_norm(x, residual, weight, backend="native"):
    return kernels.rms_norm(x, x.shape[-1:], weight, residual=residual, backend=backend)


def _linear_inputs(generator, size):
    rows, d_in, d_out = [(17, 33, 65), (64, 128, 256), (1, 7, 3), (203, 96, 40)][size]
    return [_randn(generator, rows, d_in), _randn(generator, 2 * d_out, d_in, scale=d_in**-0.5),
            _randn(generator, 2 * d_out)]


def _linear(x, weight, bias, backend="native"):
    return kernels.linear(x, weight, bias, activation="swiglu", backend=backend)


def _feed_forward_inputs(generator, size):
    rows, d, ffn = [(17, 33, 65), (64, 128, 256), (1, 7, 3), (203, 96, 40)][size]
    return [_randn(generator, rows, d), _randn(generator, ffn, d, scale=d**-0.5), _randn(generator, ffn),
            _randn(generator, d, ffn, scale=ffn**-0.5), _randn(generator, d), _randn(generator, rows, d)]


def _feed_forward(x, w1, b1, w2, b2, residual, backend="native"):
    return kernels.feed_forward(x, w1, b1, w2, b2, activation="gelu", residual=residual, backend=backend)


def _residual_inputs(generator, size):
    shape = [(17, 127), (64, 1000), (1, 1), (3, 203, 77)][size]
    return [_randn(generator, *shape), _randn(generator, *shape)]


def _residual_add(x, residual, backend="native"):
    return kernels.residual_add(x, residual, backend=backend)


CASES = {
    "attention": (_attention, _attention_reference, _attention_inputs),
    "varlen_attention": (_varlen, _varlen_reference, _varlen_inputs),
    "masked_softmax": (_softmax, functools.partial(_softmax, backend="torch"), _softmax_inputs),
    "layer_norm": (_layer_norm, functools.partial(_layer_norm, backend="torch"), _norm_inputs),
    "rms_norm": (_rms_norm, functools.partial(_rms_norm, backend="torch"), _rms_norm_inputs),
    "linear": (_linear, functools.partial(_linear, backend="torch"), _linear_inputs),
    "feed_forward": (_feed_forward, functools.partial(_feed_forward, backend="torch"), _feed_forward_inputs),
    "residual_add": (_residual_add, functools.partial(_residual_add, backend="torch"), _residual_inputs),
}


def _results(op, size, seed=0):
    fn, _, make_inputs = CASES[op]
    return _run(fn, make_inputs(torch.Generator().manual_seed(seed + size), size))


@pytest.mark.parametrize("op", sorted(CASES))
def test_four_python_threads_get_the_bits_of_serial_calls(op):
    serial = [_results(op, size) for size in range(4)]
    barrier = threading.Barrier(4)
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def worker(size):
        try:
            barrier.wait(timeout=60)  # all four start together
            results[size] = [_results(op, size) for _ in range(3)]  # repeated, so the calls overlap
        except BaseException as error:  # noqa: BLE001  (re-raised in the main thread)
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(size,)) for size in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors[0]
    for size in range(4):
        for repeat in results[size]:
            for i, (got, expected) in enumerate(zip(repeat, serial[size])):
                assert torch.equal(got, expected), f"{op} shape {size}, result {i}: differs from the serial call"


def _fp64(inputs):
    return [t.detach().double().requires_grad_(True) if t.is_floating_point() else t for t in inputs]


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("op", sorted(CASES))
def test_intra_op_thread_counts_stay_within_tolerance_and_repeat_bit_for_bit(op, restore_threads):
    """The largest shapes (work split between threads) in fp64, whose fp32 reductions over ~200 rows exceed the fixed
    fp32 table even in plain torch, and the smallest in fp32; the bits run to run in fp32 at the largest."""
    fn, reference_fn, make_inputs = CASES[op]
    for threads in (1, 2, 8):
        torch.set_num_threads(threads)
        generator = torch.Generator().manual_seed(threads)
        check_against_reference(fn, reference_fn, *_fp64(make_inputs(generator, 3)))
        check_against_reference(fn, reference_fn, *make_inputs(generator, 0))
        first, second = _results(op, 3), _results(op, 3)
        for i, (a, b) in enumerate(zip(first, second)):
            assert torch.equal(a, b), f"{op} with {threads} threads, result {i}: differs run to run"


def test_the_bit_comparison_fails_on_a_different_result():
    """Negative control: the comparison used above tells one changed ulp apart."""
    a = _results("layer_norm", 0)
    b = [t.clone() for t in a]
    b[0].view(-1)[5] = torch.nextafter(b[0].view(-1)[5], torch.tensor(float("inf")))
    assert not torch.equal(a[0], b[0])


