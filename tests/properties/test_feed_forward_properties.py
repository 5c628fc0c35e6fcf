"""Property: ``kernels.linear`` and ``kernels.feed_forward`` on every CPU backend match ``kernels.reference``
(forward and backward) for drawn shapes (empty and length-1 dims, odd feature sizes), layouts of the input and of
the weights (a transposed ``(in, out)`` tensor viewed as ``(out, in)``, sliced), dtypes, every activation, optional
biases and residual. Weights are scaled like ``nn.Linear``'s, so outputs stay O(1)."""

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

ACTIVATIONS = st.sampled_from([None, *reference.ACTIVATIONS])


def _features(small):
    return st.integers(1, 24) if small else st.one_of(st.integers(1, 70), st.sampled_from([96, 128]))


@st.composite
def examples(draw, op, backend):
    small = tiny(backend)
    return dict(
        op=op, seed=draw(seeds()), lead=draw(st.lists(sizes(1, 4), max_size=2 if small else 3)),
        d_in=draw(_features(small)), hidden=draw(_features(small)), d_out=draw(_features(small)),
        activation=draw(ACTIVATIONS if op == "linear" else ACTIVATIONS.filter(lambda a: a is not None)),
        dtype=draw(dtypes(op, backend)), layouts=draw(st.tuples(*[st.sampled_from(LAYOUTS)] * 3)),
        bias=draw(st.tuples(st.booleans(), st.booleans())), residual=draw(st.booleans()))


def _weight(generator, rows, cols, dtype, layout):
    return make(generator, (rows, cols), dtype, layout, scale=cols**-0.5, grad=True)


def _linear_inputs(e, generator):
    width = 2 * e["d_out"] if e["activation"] in reference.GATED_ACTIVATIONS else e["d_out"]
    x = make(generator, (*e["lead"], e["d_in"]), e["dtype"], e["layouts"][0], grad=True)
    weight = _weight(generator, width, e["d_in"], e["dtype"], e["layouts"][1])
    bias = make(generator, (width,), e["dtype"], e["layouts"][2], grad=True) if e["bias"][0] else None
    return (x, weight, bias), {"activation": e["activation"]}


def _feed_forward_inputs(e, generator):
    width = 2 * e["hidden"] if e["activation"] in reference.GATED_ACTIVATIONS else e["hidden"]
    x = make(generator, (*e["lead"], e["d_in"]), e["dtype"], e["layouts"][0], grad=True)
    w1 = _weight(generator, width, e["d_in"], e["dtype"], e["layouts"][1])
    w2 = _weight(generator, e["d_out"], e["hidden"], e["dtype"], e["layouts"][2])
    b1 = make(generator, (width,), e["dtype"], grad=True) if e["bias"][0] else None
    b2 = make(generator, (e["d_out"],), e["dtype"], grad=True) if e["bias"][1] else None
    residual = make(generator, (*e["lead"], e["d_out"]), e["dtype"], grad=True) if e["residual"] else None
    return (x, w1, b1, w2, b2), {"activation": e["activation"], "residual": residual}


@pytest.mark.parametrize("op", ["linear", "feed_forward"])
@pytest.mark.parametrize("backend", backends("linear"))
def test_matches_the_reference(op, backend):
    function, reference_function = getattr(kernels, op), getattr(reference, op)
    make_inputs = _linear_inputs if op == "linear" else _feed_forward_inputs

    def check(example):
        args, kwargs = make_inputs(example, torch.Generator().manual_seed(example["seed"]))
        check_rule(functools.partial(function, backend=backend), reference_function, *args, **kwargs)

    check_property(examples(op, backend), check, backend)


def test_negative_control_a_kernel_with_the_wrong_activation_fails():
    def relu_instead(x, weight, bias, *, activation):
        return kernels.linear(x, weight, bias, activation="relu" if activation == "gelu" else activation)

    def check(example):
        args, kwargs = _linear_inputs(example, torch.Generator().manual_seed(example["seed"]))
        check_against_reference(relu_instead, reference.linear, *args, **kwargs)

    assert_property_fails(examples("linear", "native"), check)
