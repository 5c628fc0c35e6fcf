"""The public functions' common calls in one C++ call: ``kernels._C.fast`` (csrc/include/kernels/fast_calls.h).

A public function tries its fast call first when :func:`usable` says the call may take it; the fast call returns the
result, or None when the call is not the common one (a tensor subclass, a multi-dimensional ``normalized_shape``, a
(device, dtype) that ``"auto"`` does not run natively, any argument the full checks would refuse, ...), and the
function then runs its Python path with the full checks, backend selection and error messages.

The C++ side learns from the registry which (device, dtype) pairs ``"auto"`` runs natively: written here for every op
with a fast call, now and whenever the op's backends or auto order change (``_backend.on_change``).
"""

from __future__ import annotations

import torch

from .. import _backend
from .._extension import _C

_FAST = getattr(_C, "fast", None)  # None without the extension (or with an older build of it)

# What the fast calls may serve: the floating dtypes (each op's registry narrows them per device).
_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DEVICE_TYPES = ("cpu", "cuda")
# The (op, device type) pairs whose fast call makes the native backend's per-call check itself: the attention ops on
# the CPU (head dims; csrc/autograd/fast_attention.cpp). On CUDA their check depends on the GPU: no fast call there.
_CHECKED_IN_CPP = {("attention", "cpu"), ("attention_with_kv_cache", "cpu"), ("varlen_attention", "cpu")}

_is_compiling = torch.compiler.is_compiling
_function_mode_enabled = torch._C._is_torch_function_mode_enabled


def usable(backend) -> bool:
    """Whether a call passing ``backend=`` may take a fast call: the backend it asks for is ``"auto"`` (after
    ``use_backend`` / ``set_default_backend``) or ``"native"``, outside torch.compile (which traces the registered op
    instead) and outside any torch-function mode (which must see the public call as it would have)."""
    if backend == "auto":
        backend = _backend._STACK[-1] if _backend._STACK else _backend._DEFAULT[0]
    return (backend == "auto" or backend == "native") and not _is_compiling() and not _function_mode_enabled()


def _serve(op: str) -> None:
    """Writes ``op``'s natively served (device type, dtypes) into the C++ table."""
    if op in _OPS:
        for device_type in _DEVICE_TYPES:
            _FAST.serve(op, device_type, _backend.auto_native_dtypes(
                op, device_type, _FLOATING, checked_by_caller=(op, device_type) in _CHECKED_IN_CPP))


def _not_common(*args):
    return None


if _FAST is not None:
    _OPS = frozenset(_FAST.ops())
    layer_norm = _FAST.layer_norm  # (x, normalized_shape, weight, bias, eps, residual)
    rms_norm = _FAST.rms_norm  # (x, normalized_shape, weight, eps, residual)
    linear = _FAST.linear  # (x, weight, bias, activation)
    feed_forward = _FAST.feed_forward  # (x, w1, b1, w2, b2, activation, dropout_p, residual)
    attention = _FAST.attention  # (q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, key_padding_mask)
    attention_with_kv_cache = _FAST.attention_with_kv_cache  # (q, k_cache, v_cache, cache_seqlens, is_causal, scale)
    varlen_attention = _FAST.varlen_attention  # (q, k, v, cu_q, cu_k, max_q, max_k, is_causal, scale, dropout_p)
    _backend.on_change(_serve)
    for _op in _OPS:
        _serve(_op)
else:
    _OPS = frozenset()
    layer_norm = rms_norm = linear = feed_forward = _not_common
    attention = attention_with_kv_cache = varlen_attention = _not_common
