"""The attention test suites' shared cases (tests/test_attention*.py): every (device, backend) usable here, the
public function on one backend, random q/k/v, and the check against the fp64 reference by testing.md's rule."""

from __future__ import annotations

import functools

import pytest
import torch

import kernels
from kernels import _backend, reference
from kernels.testing import available_devices, backends_for, check_against_reference

CASES = [(device, backend) for device in available_devices()
         for backend in backends_for("attention", device) + ["torch"]]
FAST = [case for case in CASES if case[1] != "torch"]


def ids(case):
    return f"{case[0]}-{case[1]}"


def attention(backend, *args, dropout_mask=None, **kwargs):
    """The public function on one backend; ``dropout_mask`` is the reference's, ignored here."""
    return kernels.scaled_dot_product_attention(*args, backend=backend, **kwargs)


def qkv(batch, heads, sq, sk, d, *, device, dtype=torch.float32, kv_heads=None, grad=True, scale=1.0):
    kv_heads = heads if kv_heads is None else kv_heads
    q = torch.randn(batch, heads, sq, d, device=device, dtype=dtype) * scale
    k = torch.randn(batch, kv_heads, sk, d, device=device, dtype=dtype) * scale
    v = torch.randn(batch, kv_heads, sk, d, device=device, dtype=dtype)
    return [t.requires_grad_(grad) for t in (q, k, v)]


def check(backend, *args, **kwargs):
    q = args[0]
    served = _backend.implementations("attention")[backend].dtypes.get(q.device.type, ())
    if q.dtype not in served:
        pytest.skip(f"backend {backend!r} does not serve {q.dtype} on {q.device.type} (a documented limit)")
    return check_against_reference(functools.partial(attention, backend), reference.scaled_dot_product_attention,
                                   *args, **kwargs)


def keep_mask_for_next_call(seed, shape, dropout_p, device):
    """The keep-mask the next forward will use after ``torch.manual_seed(seed)`` (it draws its Philox seed first)."""
    from kernels.triton.attention import dropout_keep_mask

    torch.manual_seed(seed)
    philox_seed = int(torch.randint(2**31, (1,), dtype=torch.int64, device=device))  # drawn on the inputs' device
    keep = dropout_keep_mask(philox_seed, shape, dropout_p, device=device)
    torch.manual_seed(seed)
    return keep
