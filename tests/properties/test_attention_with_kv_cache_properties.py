"""Property: ``kernels.attention_with_kv_cache`` on every CPU backend matches dense reference attention over the valid
cache entries, bottom-right aligned (query ``i`` of ``Sq`` sees keys ``j < cache_seqlens[b]`` and, causal,
``j <= cache_seqlens[b] - Sq + i``), for drawn batches, query counts, cache sizes and fill levels (empty caches and
queries that see no key included), GQA, head dims 1..256, scales, dtypes and cache layouts (a view of a longer
cache). The examples check the forward (the gradients of the kernels it shares are the dense property's)."""

import functools

import pytest
import torch
from hypothesis import strategies as st

import kernels
from kernels import reference
from kernels.testing import check_against_reference

from _properties import (
    HEAD_DIMS, assert_property_fails, backends, check_property, check_rule, dtypes, make, seeds, sizes, tiny,
)

OP = "attention_with_kv_cache"


@st.composite
def examples(draw, backend):
    small = tiny(backend)
    batch = draw(sizes(1, 2 if small else 3))
    cache = draw(sizes(1, 16 if small else 64))
    kv_heads, group = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    return dict(
        seed=draw(seeds()), batch=batch, sq=draw(st.integers(1, 4)), cache=cache, heads=kv_heads * group,
        kv_heads=kv_heads, head_dim=draw(st.integers(1, 32) if small else HEAD_DIMS), dtype=draw(dtypes(OP, backend)),
        lengths=draw(st.one_of(st.none(), st.lists(st.integers(0, cache), min_size=batch, max_size=batch))),
        sliced_cache=draw(st.booleans()), is_causal=draw(st.booleans()),
        scale=draw(st.one_of(st.none(), st.floats(-2.0, 2.0))))


def _reference(q, k_cache, v_cache, *, cache_seqlens=None, is_causal=True, scale=None):
    """The contract restated: a bool keep-mask of the valid, visible cache entries, then dense attention."""
    batch, sq, smax = q.shape[0], q.shape[2], k_cache.shape[2]
    lengths = torch.full((batch,), smax) if cache_seqlens is None else cache_seqlens.long()
    j = torch.arange(smax)[None, None, :]  # (1, 1, Smax)
    keep = j < lengths[:, None, None]
    if is_causal:
        last_visible = lengths[:, None, None] - sq + torch.arange(sq)[None, :, None]  # (B, Sq, 1)
        keep = keep & (j <= last_visible)
    return reference.scaled_dot_product_attention(q, k_cache, v_cache, keep.expand(batch, sq, smax)[:, None],
                                                  scale=scale, enable_gqa=True)


def _inputs(e, grad):
    generator = torch.Generator().manual_seed(e["seed"])
    b, h, hkv, d, dtype = e["batch"], e["heads"], e["kv_heads"], e["head_dim"], e["dtype"]
    q = make(generator, (b, h, e["sq"], d), dtype, grad=grad)
    spare = 5 if e["sliced_cache"] else 0  # a cache allocated longer than the part passed in
    k_cache, v_cache = (make(generator, (b, hkv, e["cache"] + spare, d), dtype)[:, :, :e["cache"]]
                        .detach().requires_grad_(grad) for _ in range(2))
    kwargs = {"is_causal": e["is_causal"], "scale": e["scale"]}
    if e["lengths"] is not None:
        kwargs["cache_seqlens"] = torch.tensor(e["lengths"], dtype=torch.int32).reshape(b)
    return (q, k_cache, v_cache), kwargs


@pytest.mark.parametrize("backend", backends(OP))
def test_matches_the_reference(backend):
    # The decoding semantics (fill levels, bottom-right alignment, GQA, cache views) on the forward. The native
    # gradient runs the dense attention kernels, whose gradients test_attention_properties checks; at a decode step's
    # shapes (one or two visible keys, |scale| ~ 2) their fp32 rounding in the flash-style backward (delta =
    # rowsum(dO * O)) sits at the fixed fp32 table's edge, see test_one_visible_key_gradient_is_rounding_noise.
    def check(example):
        args, kwargs = _inputs(example, False)
        check_rule(functools.partial(kernels.attention_with_kv_cache, backend=backend), _reference,
                   *args, backward=False, **kwargs)

    check_property(examples(backend), check, backend)


def test_negative_control_a_kernel_ignoring_the_fill_levels_fails():
    def check(example):
        args, kwargs = _inputs(example, grad=False)
        check_against_reference(lambda *a, cache_seqlens=None, **k: kernels.attention_with_kv_cache(*a, **k),
                                _reference, *args, backward=False, **kwargs)

    assert_property_fails(examples("torch"), check)


def test_one_visible_key_gradient_is_rounding_noise():
    """One cache entry, scale 2: the row has P = 1, so the key's exact gradient is 0 = dO.v - dO.O, which the
    flash-style backward (the two dot products summed in different orders) reaches to fp32 rounding only. Ours must be
    within a few roundings of the products that cancel."""
    example = dict(seed=0, batch=1, sq=4, cache=1, heads=1, kv_heads=1, head_dim=32, dtype=torch.float32, lengths=None,
                   sliced_cache=False, is_causal=False, scale=2.0)
    (q, k_cache, v_cache), kwargs = _inputs(example, grad=True)
    out = kernels.attention_with_kv_cache(q, k_cache, v_cache, backend="native", **kwargs)
    grad_out = torch.randn_like(out)
    dk, = torch.autograd.grad(out, k_cache, grad_out)
    # dk = scale * sum_i q_i * (dO_i.v - dO_i.O): each dot product rounds by ~D * eps * |dO_i| |v|.
    bound = 2.0 * 32 * torch.finfo(torch.float32).eps * (
        q.abs().sum(2) * grad_out.norm(dim=-1).amax() * v_cache.norm()).amax()
    assert dk.abs().max() <= bound

