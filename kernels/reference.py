"""Plain PyTorch references: the ground truth for tests and benchmarks.

Each function computes in the dtype of its inputs with ordinary PyTorch ops, so the same function serves twice in the
tolerance rule (tests/README in testing.md): on inputs upcast to fp64 it is the reference, and on inputs of dtype T it
is "plain PyTorch in T". The semantics here are the contract every backend must meet (design.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu")
GATED_ACTIVATIONS = ("swiglu", "geglu")


# ----------------------------------------------------------------------------------------------------------------------
# Layer norm / RMS norm with the fused residual add ("Add & Norm")
# ----------------------------------------------------------------------------------------------------------------------

def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, residual=None):
    """``F.layer_norm``; with ``residual``: ``h = x + residual`` and returns ``(layer_norm(h), h)``."""
    if residual is None:
        return F.layer_norm(x, _shape(normalized_shape), weight, bias, eps)
    h = x + residual
    return F.layer_norm(h, _shape(normalized_shape), weight, bias, eps), h


def rms_norm(x, normalized_shape, weight=None, eps=None, *, residual=None):
    """``F.rms_norm`` (``eps=None``: the epsilon of fp32, or of fp64 for fp64 inputs); with ``residual`` returns
    ``(rms_norm(h), h)``."""
    if residual is None:
        return F.rms_norm(x, _shape(normalized_shape), weight, eps)
    h = x + residual
    return F.rms_norm(h, _shape(normalized_shape), weight, eps), h


def _shape(normalized_shape):
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


# ----------------------------------------------------------------------------------------------------------------------
# Masked softmax
# ----------------------------------------------------------------------------------------------------------------------

def causal_mask(sq: int, sk: int, device=None) -> torch.Tensor:
    """Boolean ``(sq, sk)`` keep-mask, top-left aligned like SDPA: query ``i`` sees keys ``j <= i``."""
    return torch.ones(sq, sk, dtype=torch.bool, device=device).tril()


def masked_softmax(x, mask=None, scale=1.0, is_causal=False):
    """``softmax(scale * x + mask)`` over the last dimension.

    ``mask``: bool (True = keep) or floating (added after scaling), broadcastable to ``x``. ``is_causal`` masks
    ``j > i`` over the last two dimensions (top-left aligned) and combines with ``mask``. Rows with no kept element
    (all masked, or all ``-inf`` after the additive mask) give zeros, never NaN.
    """
    scores = x * scale
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:  # added; a -inf hides its position whatever the score is (a NaN there does not reach the row)
            scores = torch.where(torch.isneginf(mask), float("-inf"), scores + mask)
    if is_causal:
        sq, sk = x.shape[-2], x.shape[-1]
        scores = scores.masked_fill(~causal_mask(sq, sk, x.device), float("-inf"))
    empty_row = torch.isneginf(scores).all(dim=-1, keepdim=True)
    # Softmax of finite stand-ins on empty rows, then zeros: no NaN in the output nor in the gradient that flows back
    # through an additive mask (softmax of an all -inf row is NaN, and so is its backward).
    probs = torch.softmax(scores.masked_fill(empty_row, 0.0), dim=-1)
    return probs.masked_fill(empty_row, 0.0)


# ----------------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------------

def attention_mask(sq, sk, *, attn_mask=None, is_causal=False, key_padding_mask=None, batch=None, dtype=None,
                   device=None):
    """Combines SDPA's ``attn_mask`` / ``is_causal`` and a ``(B, Sk)`` ``key_padding_mask`` (True = padding) into one
    mask broadcastable to ``(B, H, Sq, Sk)``: bool (True = keep) when every part is bool, else additive floating."""
    parts = []
    if attn_mask is not None:
        parts.append(attn_mask)
    if is_causal:
        parts.append(causal_mask(sq, sk, device))
    if key_padding_mask is not None:
        parts.append(~key_padding_mask.bool()[:, None, None, :])
    if not parts:
        return None
    if all(p.dtype == torch.bool for p in parts):
        combined = parts[0]
        for p in parts[1:]:
            combined = combined & p
        return combined
    additive = None
    for p in parts:
        if p.dtype == torch.bool:
            p = torch.zeros(p.shape, dtype=dtype, device=device).masked_fill(~p, float("-inf"))
        additive = p if additive is None else additive + p
    return additive


def expand_kv_heads(k, v, heads: int):
    """GQA/MQA: repeats each of the ``Hkv`` key/value heads ``heads // Hkv`` times (SDPA's ``enable_gqa``)."""
    hkv = k.shape[-3]
    if hkv == heads:
        return k, v
    group = heads // hkv
    return k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)


def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False, *, key_padding_mask=None, dropout_mask=None):
    """SDPA semantics on ``(B, H, S, D)`` tensors, plus ``key_padding_mask`` ``(B, Sk)`` (True = padding).

    Fully masked query rows give zeros. Dropout: with ``dropout_p > 0``, ``dropout_mask`` is the keep-mask (bool,
    broadcastable to ``(B, H, Sq, Sk)``) applied to the probabilities, scaled by ``1 / (1 - dropout_p)``; without one,
    a fresh keep-mask is drawn from torch's generator.
    """
    heads, sq, sk = q.shape[-3], q.shape[-2], k.shape[-2]
    if k.shape[-3] != heads:
        if not enable_gqa:
            raise ValueError(f"argument `k` has {k.shape[-3]} heads and `q` {heads}: pass enable_gqa=True for GQA")
        if heads % k.shape[-3] != 0:
            raise ValueError(f"argument `k` has {k.shape[-3]} heads, which does not divide the {heads} heads of `q`")
    k, v = expand_kv_heads(k, v, heads)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    mask = attention_mask(sq, sk, attn_mask=attn_mask, is_causal=is_causal, key_padding_mask=key_padding_mask,
                          dtype=q.dtype, device=q.device)
    probs = masked_softmax(q @ k.transpose(-2, -1), mask, scale=scale)
    if dropout_p > 0.0:
        if dropout_mask is None:
            dropout_mask = torch.rand(probs.shape, device=probs.device) >= dropout_p
        probs = probs * dropout_mask / (1.0 - dropout_p)
    return probs @ v


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, is_causal=False, scale=None,
                     dropout_p=0.0, dropout_mask=None):
    """``kernels.varlen_attention`` semantics, sequence by sequence with the dense reference: ``q`` ``(total_q, H,
    D)``, ``k``/``v`` ``(total_k, Hkv, D)``, sequence ``i`` spanning rows ``cu_seqlens[i]:cu_seqlens[i + 1]``
    (the ``max_seqlen`` bounds are not needed here). ``dropout_mask``: the packed ``(1, H, total_q, total_k)``
    keep-mask."""
    outputs = []
    for i in range(cu_seqlens_q.numel() - 1):
        rows = slice(int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1]))
        cols = slice(int(cu_seqlens_k[i]), int(cu_seqlens_k[i + 1]))
        keep = None if dropout_mask is None else dropout_mask[:, :, rows, cols]
        out = scaled_dot_product_attention(  # (1, H, S, D) views of the sequence
            q[rows].transpose(0, 1)[None], k[cols].transpose(0, 1)[None], v[cols].transpose(0, 1)[None],
            dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=True, dropout_mask=keep)
        outputs.append(out[0].transpose(0, 1))
    return torch.cat(outputs) if outputs else q.new_zeros(q.shape)


# ----------------------------------------------------------------------------------------------------------------------
# Feed-forward
# ----------------------------------------------------------------------------------------------------------------------

def activate(h, name):
    """Applies an activation by name. The gated ones split the last dimension in two halves, ``[gate, up]``, and
    return ``act(gate) * up`` (``swiglu``: silu, ``geglu``: erf gelu), halving the width."""
    if name is None:
        return h
    if name == "relu":
        return F.relu(h)
    if name == "gelu":
        return F.gelu(h)
    if name == "gelu_tanh":
        return F.gelu(h, approximate="tanh")
    if name == "silu":
        return F.silu(h)
    if name in GATED_ACTIVATIONS:
        gate, up = h.chunk(2, dim=-1)
        return (F.silu(gate) if name == "swiglu" else F.gelu(gate)) * up
    raise ValueError(f"argument `activation` must be one of {', '.join(ACTIVATIONS)} or None; got {name!r}")


def linear(x, weight, bias=None, *, activation=None):
    """``activation(x @ weight.T + bias)``, ``weight`` in ``nn.Linear`` layout ``(out, in)``."""
    return activate(F.linear(x, weight, bias), activation)


def feed_forward(x, w1, b1, w2, b2, activation="gelu", dropout_p=0.0, residual=None, *, dropout_mask=None):
    """``Linear(w1, b1) -> activation -> dropout -> Linear(w2, b2)``, plus ``residual`` when given.

    For ``swiglu``/``geglu``, ``w1`` is ``(2 * ffn, d)``: rows ``[:ffn]`` the gate projection, ``[ffn:]`` the up one.
    Dropout acts on the activation's output; ``dropout_mask`` is its keep-mask (a fresh one is drawn when None).
    """
    h = activate(F.linear(x, w1, b1), activation)
    if dropout_p > 0.0:
        if dropout_mask is None:
            dropout_mask = torch.rand(h.shape, device=h.device) >= dropout_p
        h = h * dropout_mask / (1.0 - dropout_p)
    out = F.linear(h, w2, b2)
    return out if residual is None else residual + out
