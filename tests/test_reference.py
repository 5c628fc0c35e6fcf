"""kernels.reference against the math written out in fp64 (and against torch's own functions where they agree)."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from kernels import reference

D = torch.float64


def _close(a, b, tol=1e-10):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=tol, rtol=tol), (a - b).abs().max()


# ---------------------------------------------------------------------------------------------------------- norms

@pytest.mark.parametrize("hidden", [1, 127, 1000])
def test_layer_norm_math(hidden):
    x, w, b = torch.randn(3, 5, hidden, dtype=D) * 3 + 1, torch.randn(hidden, dtype=D), torch.randn(hidden, dtype=D)
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    _close(reference.layer_norm(x, hidden, w, b, 1e-5), (x - mean) / torch.sqrt(var + 1e-5) * w + b)


def test_layer_norm_residual_returns_normalised_sum_and_sum():
    x, r = torch.randn(4, 64, dtype=D), torch.randn(4, 64, dtype=D)
    y, h = reference.layer_norm(x, (64,), None, None, 1e-6, residual=r)
    _close(h, x + r)
    _close(y, F.layer_norm(x + r, (64,), eps=1e-6))
    assert torch.allclose(y.mean(-1), torch.zeros(4, dtype=D), atol=1e-12)
    assert torch.allclose(y.var(-1, unbiased=False), torch.ones(4, dtype=D), atol=1e-4)


@pytest.mark.parametrize("eps", [None, 1e-6])
def test_rms_norm_math(eps):
    x, w = torch.randn(6, 127, dtype=D), torch.randn(127, dtype=D)
    expected_eps = torch.finfo(D).eps if eps is None else eps
    expected = x / torch.sqrt((x * x).mean(-1, keepdim=True) + expected_eps) * w
    _close(reference.rms_norm(x, 127, w, eps), expected)
    y, h = reference.rms_norm(x, [127], w, eps, residual=x)
    _close(h, 2 * x)
    _close(y, (2 * x) / torch.sqrt((4 * x * x).mean(-1, keepdim=True) + expected_eps) * w)


# ------------------------------------------------------------------------------------------------- masked softmax

def _softmax_math(scores, keep):
    """Row by row: exp over the kept entries, normalised; rows with nothing kept are zeros."""
    out = torch.zeros_like(scores)
    for index in itertools.product(*(range(n) for n in scores.shape[:-1])):
        row, kept = scores[index], keep[index]
        if kept.any():
            e = torch.where(kept, torch.exp(row - row[kept].max()), torch.zeros_like(row))
            out[index] = e / e.sum()
    return out


def test_masked_softmax_bool_mask_scale_and_fully_masked_row():
    x = torch.randn(2, 3, 7, 9, dtype=D)
    mask = torch.rand(2, 1, 7, 9) > 0.4  # broadcast over heads
    mask[0, 0, 2] = False  # a fully masked row
    out = reference.masked_softmax(x, mask, 0.7)
    _close(out, _softmax_math(0.7 * x, mask.expand_as(x)))
    assert torch.equal(out[0, :, 2], torch.zeros(3, 9, dtype=D))


def test_masked_softmax_additive_mask_and_causal():
    x = torch.randn(2, 5, 8, dtype=D)
    additive = torch.randn(1, 5, 8, dtype=D)
    additive[0, 1, 3:] = float("-inf")
    out = reference.masked_softmax(x, additive, 1.0, True)
    keep = torch.ones(5, 8, dtype=torch.bool).tril() & ~torch.isneginf(additive[0])
    _close(out, _softmax_math(x + additive, keep.expand_as(x)))


def test_masked_softmax_rows_sum_to_one_and_shift_invariant():
    x = torch.randn(4, 33, dtype=D)
    out = reference.masked_softmax(x)
    _close(out.sum(-1), torch.ones(4, dtype=D))
    _close(reference.masked_softmax(x + 11.0), out, 1e-12)


def test_causal_mask_is_top_left_aligned():
    assert torch.equal(reference.causal_mask(2, 4), torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool))


# ------------------------------------------------------------------------------------------------------ attention

def _attention_math(q, k, v, keep, scale):
    scores = (q @ k.transpose(-2, -1)) * scale
    return _softmax_math(scores, keep.expand_as(scores)) @ v


@pytest.mark.parametrize("sq, sk", [(5, 5), (3, 7), (7, 3)])
def test_sdpa_causal_and_padding(sq, sk):
    q, k, v = (torch.randn(2, 3, s, 16, dtype=D) for s in (sq, sk, sk))
    padding = torch.zeros(2, sk, dtype=torch.bool)
    padding[1, -2:] = True
    out = reference.scaled_dot_product_attention(q, k, v, is_causal=True, key_padding_mask=padding)
    keep = torch.ones(sq, sk, dtype=torch.bool).tril() & ~padding[:, None, None, :]
    _close(out, _attention_math(q, k, v, keep, 1 / 4))


def test_sdpa_matches_torch_sdpa_with_masks_it_accepts():
    q, k, v = torch.randn(2, 4, 9, 8, dtype=D), torch.randn(2, 4, 11, 8, dtype=D), torch.randn(2, 4, 11, 8, dtype=D)
    bool_mask = torch.rand(2, 1, 9, 11) > 0.3
    bool_mask[..., 0] = True  # no fully masked rows, where torch's SDPA and ours could differ
    float_mask = torch.randn(1, 4, 9, 11, dtype=D)
    for mask in (bool_mask, float_mask):
        _close(reference.scaled_dot_product_attention(q, k, v, mask, scale=0.3),
               F.scaled_dot_product_attention(q, k, v, mask, scale=0.3))


def test_sdpa_gqa_repeats_kv_heads():
    q, k, v = torch.randn(1, 6, 5, 8, dtype=D), torch.randn(1, 2, 5, 8, dtype=D), torch.randn(1, 2, 5, 8, dtype=D)
    out = reference.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    expected = F.scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1))
    _close(out, expected)
    with pytest.raises(ValueError, match="enable_gqa"):
        reference.scaled_dot_product_attention(q, k, v)


def test_sdpa_fully_masked_rows_are_zero():
    q, k, v = (torch.randn(1, 2, 4, 8, dtype=D) for _ in range(3))
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    mask[..., 1, :] = False
    out = reference.scaled_dot_product_attention(q, k, v, mask)
    assert torch.equal(out[:, :, 1], torch.zeros(1, 2, 8, dtype=D))
    assert torch.isfinite(out).all()


def test_sdpa_dropout_uses_the_given_keep_mask():
    q, k, v = (torch.randn(2, 2, 6, 8, dtype=D) for _ in range(3))
    keep = torch.rand(2, 2, 6, 6) >= 0.25
    out = reference.scaled_dot_product_attention(q, k, v, dropout_p=0.25, dropout_mask=keep)
    probs = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(8), -1)
    _close(out, (probs * keep / 0.75) @ v)


def test_varlen_attention_is_the_dense_math_per_sequence():
    """Three packed sequences (5 x 7, 0 x 2 and 4 x 3 queries x keys), GQA, causal, a scale: each sequence's rows
    match the attention math of that sequence alone."""
    cu_q, cu_k = torch.tensor([0, 5, 5, 9], dtype=torch.int32), torch.tensor([0, 7, 9, 12], dtype=torch.int32)
    q, k, v = torch.randn(9, 4, 8, dtype=D), torch.randn(12, 2, 8, dtype=D), torch.randn(12, 2, 8, dtype=D)
    out = reference.varlen_attention(q, k, v, cu_q, cu_k, 5, 7, is_causal=True, scale=0.3)
    assert out.shape == q.shape
    for (r0, r1), (c0, c1) in zip([(0, 5), (5, 9)], [(0, 7), (9, 12)]):
        qs = q[r0:r1].transpose(0, 1)
        ks, vs = (x[c0:c1].repeat_interleave(2, 1).transpose(0, 1) for x in (k, v))
        keep = torch.ones(r1 - r0, c1 - c0, dtype=torch.bool).tril()
        _close(out[r0:r1], _attention_math(qs, ks, vs, keep, 0.3).transpose(0, 1))


# --------------------------------------------------------------------------------------------------- feed-forward

_MATH = {
    "relu": lambda h: torch.clamp(h, min=0),
    "gelu": lambda h: 0.5 * h * (1 + torch.erf(h / math.sqrt(2))),
    "gelu_tanh": lambda h: 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3))),
    "silu": lambda h: h / (1 + torch.exp(-h)),
}


@pytest.mark.parametrize("name", reference.ACTIVATIONS)
def test_feed_forward_math(name):
    d, ffn = 12, 10
    gated = name in reference.GATED_ACTIVATIONS
    x, residual = torch.randn(3, 4, d, dtype=D), torch.randn(3, 4, d, dtype=D)
    w1, b1 = torch.randn((2 if gated else 1) * ffn, d, dtype=D), torch.randn((2 if gated else 1) * ffn, dtype=D)
    w2, b2 = torch.randn(d, ffn, dtype=D), torch.randn(d, dtype=D)
    h = x @ w1.T + b1
    if gated:
        gate, up = h[..., :ffn], h[..., ffn:]
        act = (_MATH["silu"] if name == "swiglu" else _MATH["gelu"])(gate) * up
    else:
        act = _MATH[name](h)
    keep = torch.rand(3, 4, ffn) >= 0.5
    out = reference.feed_forward(x, w1, b1, w2, b2, name, 0.5, residual, dropout_mask=keep)
    _close(out, residual + (act * keep / 0.5) @ w2.T + b2)
    _close(reference.linear(x, w1, b1, activation=name), act)


def test_unknown_activation_names_the_argument():
    with pytest.raises(ValueError, match="`activation`"):
        reference.activate(torch.zeros(2), "tanh")
