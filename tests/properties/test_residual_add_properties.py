"""Property: ``kernels.residual_add`` on every CPU backend matches plain addition, its definition (kernels.reference
has no separate one), forward and backward, for drawn shapes (empty and length-1 dims), layouts and dtypes."""

import functools
import math

import pytest
import torch
from hypothesis import strategies as st

import kernels
from kernels.testing import check_against_reference

from _properties import (
    LAYOUTS, assert_property_fails, backends, check_property, check_rule, dtypes, make, seeds, sizes, tiny,
)


@st.composite
def examples(draw, backend):
    small = tiny(backend)
    shape = draw(st.lists(sizes(1, 9 if small else 70), min_size=1, max_size=3 if small else 4)
                 .filter(lambda dims: math.prod(dims) <= 100_000))  # odd sizes, not big ones
    return dict(seed=draw(seeds()), shape=shape, dtype=draw(dtypes("residual_add", backend)),
                layouts=draw(st.tuples(*[st.sampled_from(LAYOUTS)] * 2)))


def _add(x, residual):
    return x + residual


@pytest.mark.parametrize("backend", backends("residual_add"))
def test_matches_the_reference(backend):
    def check(example):
        generator = torch.Generator().manual_seed(example["seed"])
        x, residual = (make(generator, example["shape"], example["dtype"], layout, grad=True)
                       for layout in example["layouts"])
        check_rule(functools.partial(kernels.residual_add, backend=backend), _add, x, residual)

    check_property(examples(backend), check, backend)


def test_negative_control_a_kernel_that_drops_the_residual_fails():
    def check(example):
        generator = torch.Generator().manual_seed(example["seed"])
        x, residual = (make(generator, example["shape"], example["dtype"], layout, grad=True)
                       for layout in example["layouts"])
        check_against_reference(lambda x, residual: x * 1, _add, x, residual)

    assert_property_fails(examples("native"), check)
