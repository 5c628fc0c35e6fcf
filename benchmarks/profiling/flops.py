"""Model FLOPs of one step: ``torch.utils.flop_counter.FlopCounterMode`` over one step, taught this package's ops.

The counter sees the ops at the dispatcher's top level and counts matmuls (``mm``, ``addmm``, ``bmm``, SDPA's CUDA
kernels, forward and backward). A registered op is opaque to it, so formulas are supplied here for every
``kernels::`` op that does matmul work, and for the CPU flash SDPA (torch has formulas for its CUDA kernels only):
* linear ``x (M, K) @ weight.T (N, K)``: ``2 M N K`` (a gated projection whose gate and up weights are held apart:
  both); the feed-forward op: every GEMM; the backward GEMMs likewise;
* attention: ``4 B H Sq Sk D`` forward (``2 B H Sq Sk (D_qk + D_v)``) as torch counts SDPA, a causal mask not
  halved (torch's convention); backward twice the forward: the four GEMMs of the gradients, without the recomputed
  ``Q K^T`` of a flash backward. Torch's own SDPA backward formulas count that recomputation (2.5x); they are
  replaced here so that a model counts the same FLOPs whichever attention runs it (a ``bmm`` + softmax eager
  attention, SDPA, or our kernels): model FLOPs, as in MFU's definition. Packed (varlen) attention sums
  ``Sq_i Sk_i`` over the sequences; cached decoding uses the cache lengths.
Elementwise work (norms, softmax, activations) is not counted, as in the usual model-FLOPs definition.

A step with ``torch.no_grad`` lets ``nn.TransformerEncoderLayer`` take torch's fused fast path, which the counter
cannot see into; :func:`count_step_flops` runs the counted step with gradients enabled where the caller says so.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch.utils.flop_counter import FlopCounterMode


def _rows(shape) -> int:
    return math.prod(shape[:-1])


def _up_weight(args, kwargs, index, name):
    """The separate ``up`` weight of a gated projection (``(gate, up)`` held apart), or None."""
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None


def _linear_with_up(index: int | None, name: str = "weight_up"):
    """``2 M N K`` for ``x (M, K) @ weight.T``, plus the up projection's when the op takes one at ``index``."""
    def formula(x, weight, *args, out_shape=None, **kwargs) -> int:
        up = None if index is None else _up_weight((x, weight, *args), kwargs, index, name)
        return 2 * _rows(x) * (math.prod(weight) + (0 if up is None else math.prod(up)))
    return formula


def _feed_forward(x, w1, b1, w2, *args, out_shape=None, **kwargs) -> int:
    up = _up_weight((x, w1, b1, w2, *args), kwargs, 10, "w1_up")  # (x, w1, b1, w2, b2, ..., save_pre, w1_up, b1_up)
    return 2 * _rows(x) * (math.prod(w1) + (0 if up is None else math.prod(up)) + math.prod(w2))


def _act_backward(grad, weight, *args, out_shape=None, **kwargs) -> int:
    return 0 if weight is None else 2 * grad[0] * math.prod(weight)  # grad (M, N) @ weight (N, F)


def _weight_grad(grad, x, *args, out_shape=None, **kwargs) -> int:
    return 2 * grad[0] * grad[1] * x[1]  # grad.T (N, M) @ x (M, K)


def _matmul(a, b, *args, out_shape=None, **kwargs) -> int:
    return 2 * a[0] * a[1] * b[-1]


def _dense_attention(q, k, v) -> int:
    b, h, sq, d_qk = q[0], q[1], q[-2], q[-1]
    return 2 * b * h * sq * k[-2] * (d_qk + v[-1])


def _attention(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return _dense_attention(q, k, v)


def _attention_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return 2 * _dense_attention(q, k, v)


def _varlen_pairs(cu_q, cu_k) -> int:
    """Sum over the packed sequences of ``Sq_i * Sk_i`` (reads the offsets: one host copy)."""
    lengths_q, lengths_k = cu_q.diff().cpu().long(), cu_k.diff().cpu().long()
    return int((lengths_q * lengths_k).sum())


def _varlen(q, k, v, cu_q, cu_k, *args, out_val=None, **kwargs) -> int:
    return 2 * q.shape[1] * _varlen_pairs(cu_q, cu_k) * (q.shape[-1] + v.shape[-1])


def _varlen_backward(grad_out, q, k, v, out, lse, cu_q, cu_k, *args, out_val=None, **kwargs) -> int:
    return 2 * _varlen(q, k, v, cu_q, cu_k)


def _kv_cache(q, k_cache, v_cache, cache_seqlens, *args, out_val=None, **kwargs) -> int:
    b, h, sq, d_qk = q.shape
    keys = int(cache_seqlens.cpu().long().sum()) if cache_seqlens is not None else b * k_cache.shape[-2]
    return 2 * h * sq * keys * (d_qk + v_cache.shape[-1])


for _raw in (_varlen, _varlen_backward, _kv_cache):
    _raw._get_raw = True  # FlopCounterMode passes these the tensors themselves, not their shapes

# op name -> formula; the names of both backends (native: C++ schemas in csrc/ops.cpp; triton: kernels/_ops/).
_KERNEL_FORMULAS = {
    # linear_forward (C++): no up weight; triton_linear_forward(x, weight, bias, activation, dropout_p, seed,
    # residual, save_pre, weight_up, bias_up); the composite {backend}_linear(x, weight, bias, activation, save_pre,
    # weight_up, bias_up)
    "linear_forward": _linear_with_up(None), "triton_linear_forward": _linear_with_up(8),
    "native_linear": _linear_with_up(5), "triton_linear": _linear_with_up(5),
    "native_feed_forward": _feed_forward, "triton_feed_forward": _feed_forward,
    "linear_act_backward": _act_backward, "triton_linear_act_backward": _act_backward,
    "linear_weight_grad": _weight_grad, "triton_matmul": _matmul,
    "attention_forward": _attention, "triton_attention": _attention,
    "attention_backward": _attention_backward, "triton_attention_backward": _attention_backward,
    "varlen_attention_forward": _varlen, "triton_varlen_attention": _varlen,
    "varlen_attention_backward": _varlen_backward, "triton_varlen_attention_backward": _varlen_backward,
    "triton_attention_with_kv_cache": _kv_cache,
}
_ATEN_FORMULAS = {
    "_scaled_dot_product_flash_attention_for_cpu": _attention,
    "_scaled_dot_product_flash_attention_for_cpu_backward": _attention_backward,
    # torch's (grad_out, query, key, value, ...) backward ops, (B, H, S, D): counted without the recomputation
    "_scaled_dot_product_flash_attention_backward": _attention_backward,
    "_scaled_dot_product_efficient_attention_backward": _attention_backward,
    "_scaled_dot_product_cudnn_attention_backward": _attention_backward,
}


def _packet(namespace, name):
    try:
        return getattr(namespace, name)
    except (AttributeError, RuntimeError):  # an op this build or this torch does not define
        return None


def custom_formulas() -> dict:
    """FlopCounterMode's ``custom_mapping``: the ops it cannot count by itself, and SDPA's backward (above)."""
    import kernels  # noqa: F401  (loads the ops)

    mapping = {}
    for namespace, formulas in ((torch.ops.kernels, _KERNEL_FORMULAS), (torch.ops.aten, _ATEN_FORMULAS)):
        for name, formula in formulas.items():
            packet = _packet(namespace, name)
            if packet is not None:
                mapping[packet] = formula
    return mapping


def count_step_flops(step, *, grad_enabled: bool | None = None) -> int:
    """Matmul FLOPs of one call of ``step`` (forward, backward and optimizer if it has them). ``grad_enabled=True``
    runs it with gradients on (torch's fast inference paths off; same FLOPs, visible to the counter)."""
    counter = FlopCounterMode(display=False, custom_mapping=custom_formulas())
    grad = contextlib.nullcontext() if grad_enabled is None else torch.set_grad_enabled(grad_enabled)
    with grad, counter:
        step()
    return int(counter.get_total_flops())
