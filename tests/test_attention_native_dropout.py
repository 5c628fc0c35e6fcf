"""The native attention backend's dropout: Philox4x32-10 keyed by the seed, the counter the element's offset -- the same
numbers as Triton's tl.rand -- against the reference with the seed's keep-mask, the seed drawn from torch's generator,
and known answers."""

from __future__ import annotations

import pytest
import torch
from _attention_native_cases import native_attention, padding_mask, qkv_inputs

from kernels import reference
from kernels._extension import has_native_kernel
from kernels.testing import check_against_reference

pytestmark = pytest.mark.skipif(not has_native_kernel("attention_forward", "cpu"),
                                reason="kernels._C lacks the native attention kernels")

if has_native_kernel("attention_forward", "cpu"):
    from kernels._ops import attention_native as native

ops = torch.ops.kernels


def test_dropout_matches_reference_with_the_keep_mask_of_the_seed():
    b, h, sq, sk, d, p, seed = 2, 2, 33, 140, 16, 0.25, 987654321
    q, k, v = qkv_inputs(b, h, h, sq, sk, d)
    padding = padding_mask(b, sk)
    keep = native.dropout_keep_mask(seed, (b, h, sq, sk), p)
    assert 0.65 < keep.float().mean().item() < 0.85

    def fn(q, k, v, key_padding_mask):
        return ops.attention_forward(q, k, v, None, key_padding_mask, True, d ** -0.5, p, torch.tensor([seed]))[0]

    def ref(q, k, v, key_padding_mask):
        return reference.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True,
                                                      key_padding_mask=key_padding_mask, dropout_mask=keep)

    check_against_reference(fn, ref, q, k, v, padding)


def test_dropout_seed_is_drawn_from_torch_generator():
    q, k, v = qkv_inputs(1, 2, 2, 16, 16, 8, requires_grad=False)
    torch.manual_seed(5)
    a = native_attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(5)
    b = native_attention(q, k, v, dropout_p=0.5)
    c = native_attention(q, k, v, dropout_p=0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_philox_known_answer():
    # Philox4x32-10 of Random123's known-answer test: key (0, 0), counter (0, 0, 0, 0) -> first word 0x6627e8d5.
    word = native._philox_first_word(0, torch.zeros(1, dtype=torch.int64).numpy())
    assert int(word[0]) == 0x6627E8D5


@pytest.mark.interpret
def test_keep_mask_matches_triton_tl_rand():
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.jit
    def uniform_kernel(out_ptr, seed, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + offsets, tl.rand(seed, offsets), mask=offsets < n)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not __import__("os").environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("Triton on CPU tensors needs the interpreter")
    shape, seed = (2, 3, 5, 37), 2**33 + 12345  # a seed wider than 32 bits exercises both key words
    n = 2 * 3 * 5 * 37
    out = torch.empty(n, device=device)
    uniform_kernel[(triton.cdiv(n, 256),)](out, seed, n, BLOCK=256)
    assert torch.equal(out.cpu().view(shape), native.dropout_uniform(seed, shape))
