"""Property: ``kernels.varlen_attention`` on every CPU backend matches ``kernels.reference.varlen_attention`` (forward
and backward) for drawn packings (zero to four sequences, empty ones included, query and key lengths differing per
sequence), head dims 1..256, GQA, causal or not, scales, dtypes and packed layouts (q, k, v slices of one packed
``(total, 3, H, D)`` tensor, or separate ones)."""

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


@st.composite
def examples(draw, backend):
    small = tiny(backend)
    count = draw(sizes(1, 3 if small else 4))
    lengths = sizes(1, 9 if small else 24)
    kv_heads, group = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    return dict(
        seed=draw(seeds()), q_lengths=draw(st.lists(lengths, min_size=count, max_size=count)),
        k_lengths=draw(st.lists(lengths, min_size=count, max_size=count)), heads=kv_heads * group,
        kv_heads=kv_heads, head_dim=draw(st.integers(1, 32) if small else HEAD_DIMS),
        dtype=draw(dtypes("varlen_attention", backend)), packed=draw(st.booleans()), is_causal=draw(st.booleans()),
        scale=draw(st.one_of(st.none(), st.floats(-2.0, 2.0))))


def _offsets(lengths):
    return torch.tensor([0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int32)


def _inputs(e):
    generator = torch.Generator().manual_seed(e["seed"])
    total_q, total_k = sum(e["q_lengths"]), sum(e["k_lengths"])
    h, hkv, d, dtype = e["heads"], e["kv_heads"], e["head_dim"], e["dtype"]
    if e["packed"] and total_q == total_k and h == hkv:  # self-attention packing: strided views of one tensor
        q, k, v = (t.detach().requires_grad_(True) for t in make(generator, (total_q, 3, h, d), dtype).unbind(1))
    else:
        q = make(generator, (total_q, h, d), dtype, grad=True)
        k, v = (make(generator, (total_k, hkv, d), dtype, grad=True) for _ in range(2))
    return (q, k, v, _offsets(e["q_lengths"]), _offsets(e["k_lengths"]), max(e["q_lengths"], default=0),
            max(e["k_lengths"], default=0)), {"is_causal": e["is_causal"], "scale": e["scale"]}


@pytest.mark.parametrize("backend", backends("varlen_attention"))
def test_matches_the_reference(backend):
    def check(example):
        args, kwargs = _inputs(example)
        check_rule(functools.partial(kernels.varlen_attention, backend=backend),
                                reference.varlen_attention, *args, **kwargs)

    check_property(examples(backend), check, backend)


def test_negative_control_a_kernel_ignoring_causality_fails():
    def check(example):
        args, kwargs = _inputs(example)
        check_against_reference(lambda *a, is_causal, **k: kernels.varlen_attention(*a, is_causal=False, **k),
                                reference.varlen_attention, *args, **kwargs)

    assert_property_fails(examples("native"), check)
