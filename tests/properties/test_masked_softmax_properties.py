"""Property: ``kernels.masked_softmax`` on every CPU backend matches ``kernels.reference`` (forward and backward) for
drawn shapes (empty and length-1 dims, odd and long rows), layouts, dtypes, masks (bool or additive with -inf,
broadcast over any subset of dims, expanded, fewer dims than ``x``, fully masked rows), ``is_causal`` and scales."""

import functools

import pytest
import torch
from hypothesis import strategies as st

import kernels
from kernels import reference
from kernels.testing import check_against_reference

from _properties import (
    LAYOUTS, assert_property_fails, backends, check_property, check_rule, dtypes, make, seeds, sizes, tiny,
)

OP = "masked_softmax"


@st.composite
def examples(draw, backend):
    small = tiny(backend)
    lead = draw(st.lists(sizes(1, 3), max_size=2 if small else 3))
    rows = draw(sizes(1, 9 if small else 17))
    cols = draw(sizes(1, 40) if small else st.one_of(sizes(1, 70), st.sampled_from([127, 129, 1000])))
    shape = (*lead, rows, cols)
    return dict(
        seed=draw(seeds()), shape=shape, dtype=draw(dtypes(OP, backend)), layout=draw(st.sampled_from(LAYOUTS)),
        mask=draw(st.sampled_from(["none", "bool", "additive"])),
        # per dim of x: whether the mask has it (else 1, broadcast); and how many leading dims the mask leaves out
        mask_dims=draw(st.lists(st.booleans(), min_size=len(shape), max_size=len(shape))),
        mask_drop=draw(st.integers(0, len(lead))), expand_mask=draw(st.booleans()), masked_row=draw(st.booleans()),
        is_causal=draw(st.booleans()), scale=draw(st.floats(-3.0, 3.0)))


def _inputs(e):
    generator = torch.Generator().manual_seed(e["seed"])
    shape = e["shape"]
    x = make(generator, shape, e["dtype"], e["layout"], scale=2.0, grad=True)
    mask = None
    if e["mask"] != "none":
        mask_shape = tuple(size if keep else 1 for size, keep in zip(shape, e["mask_dims"]))[e["mask_drop"]:]
        keep = torch.rand(mask_shape, generator=generator) < 0.7
        if e["masked_row"] and mask_shape[-2] > 0:
            keep[..., mask_shape[-2] // 2, :] = False  # a fully masked row (every row, when broadcast over rows)
        if e["mask"] == "bool":
            mask = keep
        else:
            mask = make(generator, mask_shape, e["dtype"]).detach().masked_fill(~keep, float("-inf"))
        if e["expand_mask"]:
            mask = mask.expand(shape)
    return x, mask


@pytest.mark.parametrize("backend", backends(OP))
def test_matches_the_reference(backend):
    def check(example):
        x, mask = _inputs(example)
        check_rule(functools.partial(kernels.masked_softmax, backend=backend), reference.masked_softmax,
                                x, mask, scale=example["scale"], is_causal=example["is_causal"])

    check_property(examples(backend), check, backend)


def test_negative_control_a_kernel_ignoring_the_mask_fails():
    def check(example):
        x, mask = _inputs(example)
        check_against_reference(lambda x, mask, **k: kernels.masked_softmax(x, None, backend="native", **k),
                                reference.masked_softmax, x, mask, scale=example["scale"],
                                is_causal=example["is_causal"])

    assert_property_fails(examples("native"), check)
