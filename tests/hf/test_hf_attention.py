"""The "fused_kernels" attention and mask functions (transformer/hf/attention.py) against plain PyTorch, in every mask
form transformers hands over: None with causality, 2-D padding, 4-D bool / additive / (B, 1, 1, Sk), the decoding
step against the cache with left padding, packed (varlen) batches, output_attentions; and the mask function's
compact and dense answers."""

import types

import pytest
import torch
from _hf_models import model, padded_batch, transformers  # noqa: F401  (skips without transformers)

import kernels
import transformer
from kernels.testing import check_against_reference
from transformer.hf import attention as hf_attention
from transformers.masking_utils import (
    and_masks,
    bidirectional_mask_function,
    causal_mask_function,
    sdpa_mask,
    sliding_window_causal_mask_function,
)

B, H, HKV, D = 2, 4, 2, 16


def _module(is_causal, training=False):
    return types.SimpleNamespace(is_causal=is_causal, training=training)


def _qkv(sq, sk, batch=B):
    q = torch.randn(batch, H, sq, D, requires_grad=True)
    k = torch.randn(batch, HKV, sk, D, requires_grad=True)
    v = torch.randn(batch, HKV, sk, D, requires_grad=True)
    return q, k, v


def _reference(q, k, v, mask, is_causal, scale=D ** -0.5):
    """Plain PyTorch with the documented semantics: a 2-D mask is padding (True = take part) plus causality
    (bottom-right with a cache); a 4-D mask is used as it is."""
    sq, sk = q.shape[2], k.shape[2]
    scores = torch.matmul(q, k.repeat_interleave(H // HKV, 1).transpose(-1, -2)) * scale
    keep = torch.ones(q.shape[0], 1, sq, sk, dtype=torch.bool)
    if mask is not None and mask.dim() == 4:
        if mask.dtype == torch.bool:
            keep = keep & mask
        else:
            scores = scores + mask
    else:
        if mask is not None:
            keep = keep & mask.bool()[:, None, None, :]
        if is_causal and sq > 1:
            keep = keep & torch.ones(sq, sk, dtype=torch.bool).tril(sk - sq)
    weights = torch.softmax(scores.masked_fill(~keep, float("-inf")), -1).nan_to_num(0.0)
    return torch.matmul(weights, v.repeat_interleave(H // HKV, 1)).transpose(1, 2)


def _run(is_causal):
    def run(q, k, v, mask, is_causal=is_causal):
        return hf_attention.fused_kernels_attention(_module(is_causal), q, k, v, mask, scaling=D ** -0.5)[0]
    return run


def _padding(batch, sk, left):
    """(batch, sk) bool, True = take part: the first sequence has 3 padding positions, on the left or the right."""
    mask = torch.ones(batch, sk, dtype=torch.bool)
    if left:
        mask[0, :3] = False
    else:
        mask[0, sk - 3:] = False
    return mask


FORMS = {
    "none-causal": (True, lambda sq, sk: None),
    "none-bidirectional": (False, lambda sq, sk: None),
    "padding-2d-causal-left": (True, lambda sq, sk: _padding(B, sk, left=True)),
    "padding-2d-bidirectional-right": (False, lambda sq, sk: _padding(B, sk, left=False)),
    "dense-bool-4d": (True, lambda sq, sk: torch.rand(B, 1, sq, sk) > 0.3),
    "dense-additive-4d": (True, lambda sq, sk: torch.randn(B, 1, sq, sk).clamp(max=0) * 3),
    "padding-4d-b11k": (False, lambda sq, sk: _padding(B, sk, left=False)[:, None, None, :]),
}


@pytest.mark.parametrize("form", FORMS)
def test_each_mask_form_forward_and_backward(form):
    is_causal, make_mask = FORMS[form]
    q, k, v = _qkv(9, 9)
    mask = make_mask(9, 9)
    check_against_reference(_run(is_causal), _reference, q, k, v, mask, is_causal=is_causal)


@pytest.mark.parametrize("sq", [1, 3])
@pytest.mark.parametrize("padded", [False, True])
def test_decoding_step_against_the_cache(sq, padded):
    q, k, v = _qkv(sq, 12)
    mask = _padding(B, 12, left=True) if padded else None
    with torch.no_grad():  # generation: the no-padding case runs kernels.attention_with_kv_cache
        check_against_reference(_run(True), _reference, q.detach(), k.detach(), v.detach(), mask, is_causal=True,
                                backward=False)
    check_against_reference(_run(True), _reference, q, k, v, mask, is_causal=True)


def test_output_attentions_returns_the_weights():
    q, k, v = _qkv(7, 7)
    mask = _padding(B, 7, left=True)
    out, weights = hf_attention.fused_kernels_attention(_module(True), q, k, v, mask, scaling=D ** -0.5,
                                                        output_attentions=True)
    assert weights.shape == (B, H, 7, 7)
    torch.testing.assert_close(out, _reference(q, k, v, mask, True), atol=1e-5, rtol=1e-5)
    rows = weights[1].sum(-1)  # an unpadded sequence: every row sums to 1
    torch.testing.assert_close(rows, torch.ones_like(rows))
    assert torch.equal(weights[0, :, :, :3], torch.zeros_like(weights[0, :, :, :3]))  # padding gets no weight


def test_packed_batch_goes_to_varlen_attention():
    lengths = [3, 5, 2]
    total = sum(lengths)
    q, k, v = _qkv(total, total, batch=1)
    cu = torch.tensor([0, 3, 8, 10], dtype=torch.int32)

    def run(q, k, v):
        return hf_attention.fused_kernels_attention(_module(True), q, k, v, None, scaling=D ** -0.5,
                                                    cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=5,
                                                    max_length_k=5)[0]

    def reference(q, k, v):  # each sequence on its own, causal
        parts = [_reference(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], None, True) for a, b in zip(cu[:-1], cu[1:])]
        return torch.cat(parts, dim=1)

    check_against_reference(run, reference, q, k, v)


def test_padded_models_never_get_a_dense_mask(monkeypatch):
    # The padding of a real forward reaches the kernels as key_padding_mask, never as a (B, H, Sq, Sk) attn_mask.
    calls = []
    original = kernels.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append((kwargs.get("attn_mask"), kwargs.get("key_padding_mask")))
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "scaled_dot_product_attention", spy)
    for family in ("llama", "bert"):
        m = model(family)
        ids, mask = padded_batch(family)
        transformer.swap(m)
        with torch.no_grad():
            m(ids, attention_mask=mask)
    assert calls and all(attn_mask is None and padding is not None for attn_mask, padding in calls)


def test_unsupported_arguments_raise():
    q, k, v = _qkv(4, 4)
    with pytest.raises(ValueError, match="`softcap` is not supported"):
        hf_attention.fused_kernels_attention(_module(True), q, k, v, None, softcap=30.0)


# ----------------------------------------------------------------------------------------------------------------------
# Mask function
# ----------------------------------------------------------------------------------------------------------------------

def _mask(**kwargs):
    arguments = {"batch_size": B, "q_length": 6, "kv_length": 6, "mask_function": causal_mask_function,
                 "attention_mask": None, "allow_is_causal_skip": True, "dtype": torch.float32, "device": "cpu"}
    arguments.update(kwargs)
    return hf_attention.fused_kernels_mask(**arguments)


def test_mask_function_compact_answers():
    padding = _padding(B, 6, left=True)
    assert _mask() is None
    assert _mask(attention_mask=torch.ones(B, 6, dtype=torch.bool)) is None
    assert torch.equal(_mask(attention_mask=padding), padding)
    assert torch.equal(_mask(mask_function=bidirectional_mask_function, attention_mask=padding,
                             allow_is_causal_skip=False), padding)
    decoding = _padding(B, 10, left=True)  # one new query after 9 cached keys: bottom-right aligned
    assert torch.equal(_mask(q_length=1, kv_length=10, q_offset=9, attention_mask=decoding), decoding)
    # A sliding window longer than every position masks nothing: still compact.
    assert _mask(mask_function=sliding_window_causal_mask_function(16), local_size=16) is None


@pytest.mark.parametrize("case", ["window-bites", "static-cache", "extra-and-mask"])
def test_mask_function_dense_answers_equal_sdpa_mask(case):
    padding = _padding(B, 6, left=True)
    window = sliding_window_causal_mask_function(3)
    arguments = {
        "window-bites": {"mask_function": window, "local_size": 3, "attention_mask": padding},
        "static-cache": {"q_length": 2, "q_offset": 1, "kv_length": 6, "attention_mask": padding},
        "extra-and-mask": {"mask_function": and_masks(causal_mask_function, lambda b, h, q, kv: kv != 2),
                           "allow_is_causal_skip": False, "attention_mask": padding},
    }[case]
    out = _mask(**arguments)
    full = {"batch_size": B, "q_length": 6, "kv_length": 6, "mask_function": causal_mask_function, **arguments,
            "allow_is_causal_skip": False}
    assert out.dim() == 4 and out.dtype == torch.bool
    assert torch.equal(out, sdpa_mask(**full))
