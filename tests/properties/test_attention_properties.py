"""Property: ``kernels.scaled_dot_product_attention`` on every CPU backend matches ``kernels.reference`` (testing.md's
tolerance rule, forward and backward) for drawn shapes (batch, sequence lengths 0 and 1 included, Sq != Sk, head dims
1..256, GQA), layouts of q/k/v (transposed, sliced), dtypes, masks (bool, additive with -inf, broadcast and expanded,
key padding, causal, fully masked rows) and scales."""

import functools

import pytest
import torch
from hypothesis import strategies as st

import kernels
from kernels import reference
from kernels.testing import check_against_reference

from _properties import (
    HEAD_DIMS, LAYOUTS, assert_property_fails, backends, check_property, check_rule, dtypes, make, seeds, sizes, tiny,
)

MASK_SHAPES = ("full", "2d", "per-batch", "per-head", "keys")


def _mask_shape(kind, batch, heads, sq, sk):
    return {"full": (batch, heads, sq, sk), "2d": (sq, sk), "per-batch": (batch, 1, sq, sk),
            "per-head": (1, heads, sq, sk), "keys": (batch, 1, 1, sk)}[kind]


@st.composite
def examples(draw, backend):
    small = tiny(backend)
    kv_heads, group = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    return dict(
        seed=draw(seeds()), batch=draw(sizes(1, 2 if small else 3)), heads=kv_heads * group, kv_heads=kv_heads,
        sq=draw(sizes(1, 9 if small else 40)), sk=draw(sizes(1, 9 if small else 40)),
        head_dim=draw(st.integers(1, 32) if small else HEAD_DIMS), dtype=draw(dtypes("attention", backend)),
        layouts=draw(st.tuples(*[st.sampled_from(LAYOUTS)] * 3)),
        mask=draw(st.sampled_from(["none", "bool", "additive"])), mask_shape=draw(st.sampled_from(MASK_SHAPES)),
        expand_mask=draw(st.booleans()), padding=draw(st.booleans()), is_causal=draw(st.booleans()),
        masked_row=draw(st.booleans()), scale=draw(st.one_of(st.none(), st.floats(-2.0, 2.0))))


def _inputs(e):
    generator = torch.Generator().manual_seed(e["seed"])
    b, h, hkv, sq, sk, d = e["batch"], e["heads"], e["kv_heads"], e["sq"], e["sk"], e["head_dim"]
    q, k, v = (make(generator, shape, e["dtype"], layout, grad=True)
               for shape, layout in zip([(b, h, sq, d), (b, hkv, sk, d), (b, hkv, sk, d)], e["layouts"]))
    kwargs = dict(is_causal=e["is_causal"], scale=e["scale"], enable_gqa=hkv != h)
    if e["mask"] != "none":
        shape = _mask_shape(e["mask_shape"], b, h, sq, sk)
        keep = torch.rand(shape, generator=generator) < 0.7
        if e["masked_row"] and sq > 0 and shape[-2] == sq:
            keep[..., sq // 2, :] = False  # a fully masked query row
        if e["mask"] == "bool":
            mask = keep
        else:  # additive, in q's dtype: finite values where kept, -inf where masked
            mask = make(generator, shape, e["dtype"]).detach().masked_fill(~keep, float("-inf"))
        kwargs["attn_mask"] = mask.expand(b, h, sq, sk) if e["expand_mask"] else mask
    if e["padding"]:
        padding = torch.rand(b, sk, generator=generator) < 0.3
        if e["masked_row"] and b > 0:
            padding[0] = True  # a fully padded sequence
        kwargs["key_padding_mask"] = padding
    return (q, k, v), kwargs


def _attention(backend, q, k, v, **kwargs):
    return kernels.scaled_dot_product_attention(q, k, v, backend=backend, **kwargs)


@pytest.mark.parametrize("backend", backends("attention"))
def test_matches_the_reference(backend):
    def check(example):
        tensors, kwargs = _inputs(example)
        check_rule(functools.partial(_attention, backend), reference.scaled_dot_product_attention,
                                *tensors, **kwargs)

    check_property(examples(backend), check, backend)


def test_negative_control_a_kernel_ignoring_the_padding_fails():
    def check(example):
        tensors, kwargs = _inputs(example)
        check_against_reference(lambda *t, key_padding_mask=None, **k: _attention("native", *t, **k),
                                reference.scaled_dot_product_attention, *tensors, **kwargs)

    assert_property_fails(examples("native"), check)
