"""``transformer.MultiheadAttention``: ``nn.MultiheadAttention`` on the fused kernels, and the cached decoding path.

The module subclasses ``nn.MultiheadAttention``, so the constructor, the parameters (``in_proj_weight`` or
``q/k/v_proj_weight``, ``in_proj_bias``, ``out_proj``, ``bias_k``/``bias_v``), their initialisation and the
``state_dict`` are torch's own. Only ``forward`` changes:

* projections go through ``kernels.linear`` (one GEMM for the packed q/k/v of self-attention); biases in another
  dtype than the inputs are cast to it (torch's batch-first path accepts e.g. an fp16 ``in_proj_bias`` with fp64
  inputs);
* attention goes through ``kernels.scaled_dot_product_attention`` with the masks translated to its convention
  (``attn_mask``: bool True = take part, or additive float; ``key_padding_mask`` kept as a bool ``(B, S)`` mask so
  the fast backends never materialise a ``(B, H, L, S)`` mask);
* ``need_weights=True`` computes the scores and normalises them with ``kernels.masked_softmax``;
* ``add_bias_kv`` / ``add_zero_attn`` run torch's own forward (the reference path): no kernel serves them;
* a nested ``query`` (batch-first self-attention, as torch's fast path takes it) runs on the padded batch with the
  lengths as the key padding mask and comes back nested.

Inputs are validated before any kernel runs (:func:`check_attention_inputs`): every shape torch's module rejects is
rejected, with an error that names the argument and is also of torch's exception type (``InputAssertionError`` is a
``ValueError`` and an ``AssertionError``, ``InputRuntimeError`` a ``ValueError`` and a ``RuntimeError``), so code that
catches torch's errors keeps working. The checks compare integers only: no tensor is read.

Fully masked query rows give zeros (the kernels' contract) where torch's MultiheadAttention may give NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import kernels

from ._scripting import NotScriptable
from .layer_norm import as_input_dtype


@dataclass
class AttentionCache:
    """Keys and values of one attention layer during generation, ``(B, H, S, D)`` each (None before the first step).

    Self-attention appends the new positions every step; cross-attention projects the memory once."""

    key: torch.Tensor | None = None
    value: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.key is None else self.key.shape[-2]


@dataclass
class StaticAttentionCache:
    """Keys and values of one self-attention layer in preallocated buffers, for decoding steps of fixed shapes.

    ``key`` / ``value`` ``(B, H, max_len, D)``; ``length`` ``(B,)`` int32 on their device: the valid positions of
    each row. A step writes its new keys and values at ``length`` and advances ``length`` in place, all on the
    device: no allocation that depends on the step, no host synchronisation, so a step can be captured in a CUDA
    graph and replayed (``transformer.generation.CUDAGraphStep``)."""

    key: torch.Tensor
    value: torch.Tensor
    length: torch.Tensor

    @classmethod
    def empty(cls, batch, heads, max_len, head_dim, *, device=None, dtype=None) -> "StaticAttentionCache":
        key = torch.zeros(batch, heads, max_len, head_dim, device=device, dtype=dtype)
        return cls(key, torch.zeros_like(key), torch.zeros(batch, dtype=torch.int32, device=key.device))

    def append(self, k, v):
        """Writes ``k`` / ``v`` ``(B, H, T, D)`` at positions ``length .. length + T - 1`` of each row and advances
        ``length`` by ``T``. Positions past ``max_len`` are the caller's to prevent (checking would synchronise)."""
        t = k.shape[-2]
        positions = self.length[:, None] + torch.arange(t, device=k.device, dtype=self.length.dtype)  # (B, T)
        index = positions[:, None, :, None].expand(k.shape).long()  # (B, H, T, D)
        self.key.scatter_(2, index, k)
        self.value.scatter_(2, index, v)
        self.length += t


def decode_attention(q, k, v, *, causal, key_padding_mask=None, dropout_p=0.0, backend="auto"):
    """Attention of the ``T`` newest positions ``q`` ``(B, H, T, D)`` over ``S >= T`` keys/values (cached ones first).

    The queries are the last ``T`` of the ``S`` positions, so the causal mask is aligned to the end of the cache
    (query ``i`` sees keys ``j <= S - T + i``): an explicit bool mask when there is a cache, plain ``is_causal`` when
    ``T == S``. Every cached decoding call goes through here, so a dedicated decoding kernel can be switched in at
    this one place.
    """
    t, s = q.shape[-2], k.shape[-2]
    mask = None
    if causal and t == 1:  # one new position sees every cached one: no mask to build
        causal = False
    elif causal and t != s:
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(diagonal=s - t)  # (T, S), True = keep
    return kernels.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                                is_causal=causal and t == s, key_padding_mask=key_padding_mask,
                                                backend=backend)


class InputAssertionError(ValueError, AssertionError):
    """A bad input of a transformer module: a ``ValueError`` naming the argument, and an ``AssertionError`` where
    torch.nn raises that type for the same input (``F.multi_head_attention_forward``'s shape assertions)."""


class InputRuntimeError(ValueError, RuntimeError):
    """A bad input of a transformer module: a ``ValueError`` naming the argument, and a ``RuntimeError`` where torch
    raises that type (a wrong ``attn_mask`` shape, or inputs that fail inside torch's projections and reshapes)."""


# The names check_attention_inputs uses in its messages: MultiheadAttention's own; the layers pass theirs.
ATTENTION_NAMES = ("query", "key", "value", "key_padding_mask", "attn_mask")


def _mask_dtype(mask, name):
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise InputAssertionError(f"argument `{name}` must be a bool or floating tensor; got dtype {mask.dtype} "
                                  f"(only bool and floating types of {name} are supported)")


def check_attention_inputs(mha, query, key, value, key_padding_mask=None, attn_mask=None, names=ATTENTION_NAMES):
    """Validates ``nn.MultiheadAttention.forward``'s inputs for ``mha`` as torch does, before any kernel runs; returns
    whether the inputs are batched. Shapes (batch first or not, as ``mha.batch_first``): ``query`` ``(N, L, E)`` or
    unbatched ``(L, E)``; ``key`` / ``value`` ``(N, S, kdim / vdim)``; ``key_padding_mask`` ``(N, S)`` / ``(S,)``;
    ``attn_mask`` ``(L, S)`` or ``(N * num_heads, L, S)`` / ``(num_heads, L, S)``. Only sizes and dtypes are read.
    The error types follow torch's for the same input (see InputAssertionError / InputRuntimeError)."""
    q_name, k_name, v_name, kpm_name, mask_name = names
    # self-attention (the layers' first block): one tensor to check
    self_attention = query is key and key is value and mha._qkv_same_embed_dim
    for name, tensor in ((q_name, query),) if self_attention else ((q_name, query), (k_name, key), (v_name, value)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"argument `{name}` must be a tensor, got {type(tensor).__name__}")
        if tensor.is_nested:
            raise InputRuntimeError(f"argument `{name}` is a nested tensor; only a nested `{q_name}` is taken (for "
                                    "self-attention): pass dense tensors and a key_padding_mask here")
    q_shape = query.shape
    dim = len(q_shape)
    if dim == 3:
        batch_axis = 0 if mha.batch_first else 1
        n, length = q_shape[batch_axis], q_shape[1 - batch_axis]
    elif dim == 2:
        batch_axis, n, length = None, 1, q_shape[0]
    else:
        raise InputAssertionError(f"argument `{q_name}` has shape {tuple(q_shape)}: {q_name} should be unbatched "
                                  f"2D or batched 3D tensor but received {dim}-D {q_name} tensor")
    kind = "batched (3-D)" if dim == 3 else "unbatched (2-D)"
    if q_shape[-1] != mha.embed_dim:
        raise InputAssertionError(f"argument `{q_name}` has shape {tuple(q_shape)}: was expecting embedding dimension "
                                  f"of {mha.embed_dim} (embed_dim), but got {q_shape[-1]}")
    if not query.is_floating_point():
        raise InputRuntimeError(f"argument `{q_name}` has dtype {query.dtype}; expected a floating dtype")
    k_shape = q_shape if self_attention else _check_key_value(mha, query, key, value, names, kind, n)
    src_len = k_shape[0] if batch_axis is None else k_shape[1 - batch_axis]
    if key_padding_mask is not None:
        _mask_dtype(key_padding_mask, kpm_name)
        expected = (n, src_len) if batch_axis is not None else (src_len,)
        if key_padding_mask.shape != expected:
            raise InputAssertionError(f"argument `{kpm_name}` has shape {tuple(key_padding_mask.shape)}; expected "
                                      f"{expected} for {kind} `{q_name}`")
    if attn_mask is not None:
        _mask_dtype(attn_mask, mask_name)
        if attn_mask.dim() == 2:
            expected = (length, src_len)
        elif attn_mask.dim() == 3:
            expected = (n * mha.num_heads if batch_axis is not None else mha.num_heads, length, src_len)
        else:
            raise InputAssertionError(f"For {kind} `{q_name}`, expected `{mask_name}` to be `None`, 2-D or 3-D but "
                                      f"found {attn_mask.dim()}-D tensor instead")
        if attn_mask.shape != expected:
            raise InputRuntimeError(f"argument `{mask_name}` has shape {tuple(attn_mask.shape)}: the shape of the "
                                    f"{attn_mask.dim()}D attn_mask should be {expected}")
    return batch_axis is not None


def _check_key_value(mha, query, key, value, names, kind, n):
    """``check_attention_inputs`` for a ``key`` / ``value`` that are not ``query``; returns ``key.shape``."""
    q_name, k_name, v_name = names[:3]
    k_shape, v_shape, dim = key.shape, value.shape, query.dim()
    if len(k_shape) != dim or len(v_shape) != dim:
        raise InputAssertionError(f"For {kind} `{q_name}`, expected `{k_name}` and `{v_name}` to be {dim}-D but found "
                                  f"{len(k_shape)}-D and {len(v_shape)}-D tensors respectively")
    for name, shape, features, what in ((k_name, k_shape, mha.kdim, "kdim"), (v_name, v_shape, mha.vdim, "vdim")):
        if shape[-1] != features:  # torch fails in the projection
            raise InputRuntimeError(f"argument `{name}` has shape {tuple(shape)}: was expecting embedding dimension "
                                    f"of {features} ({what}), but got {shape[-1]}")
    for name, tensor in ((k_name, key), (v_name, value)):
        if tensor.dtype != query.dtype:
            raise InputRuntimeError(f"argument `{name}` has dtype {tensor.dtype}; expected {query.dtype} (the dtype "
                                    f"of `{q_name}`)")
    kn = 1 if dim == 2 else k_shape[0 if mha.batch_first else 1]
    if kn != n:
        raise InputRuntimeError(f"argument `{k_name}` has shape {tuple(k_shape)}: batch size {kn}, expected {n} "
                                f"(the batch size of `{q_name}`)")
    if v_shape[:-1] != k_shape[:-1]:
        raise InputAssertionError(f"argument `{v_name}` has shape {tuple(v_shape)}: key's sequence and batch dims "
                                  f"{tuple(k_shape[:-1])} do not match value's {tuple(v_shape[:-1])}")
    return k_shape


class MultiheadAttention(NotScriptable, nn.MultiheadAttention):
    """Drop-in ``nn.MultiheadAttention`` on the fused kernels (same arguments, parameters and outputs)."""

    backend = "auto"  # passed to every kernel call; set by transformer.swap / the models' `backend=`

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if isinstance(query, torch.Tensor) and query.is_nested:
            return self._nested(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                                is_causal)
        batched = check_attention_inputs(self, query, key, value, key_padding_mask, attn_mask)
        if self.bias_k is not None or self.add_zero_attn:
            # No kernel serves the extra key/value positions: torch's own forward is the reference path.
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        return self._attention(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                               is_causal, batched)

    def _attention(self, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                   is_causal, batched):
        """``forward`` on validated inputs (the layers validate theirs under their own argument names)."""
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer module "
                               "method `generate_square_subsequent_mask` to create this mask.")
        if not batched:  # unbatched (L, E): add the batch dimension, drop it at the end
            batch_dim = 0 if self.batch_first else 1
            query, key, value = query.unsqueeze(batch_dim), key.unsqueeze(batch_dim), value.unsqueeze(batch_dim)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        q, k, v = self._project(query, key, value)  # (N, H, L, D), (N, H, S, D), (N, H, S, D)
        if is_causal:
            attn_mask = None  # the hint says attn_mask is the causal mask: the kernels apply it without reading it
        if attn_mask is not None or key_padding_mask is not None:
            attn_mask, key_padding_mask = self._masks(attn_mask, key_padding_mask, q)
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            out, weights = self._attention_with_weights(q, k, v, attn_mask, key_padding_mask, is_causal, dropout_p)
            if average_attn_weights:
                weights = weights.mean(dim=1)  # (N, L, S)
            if not batched:
                weights = weights.squeeze(0)
        else:
            out = kernels.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                                       is_causal=is_causal, key_padding_mask=key_padding_mask,
                                                       backend=self.backend)
        out = self._out(out)
        if not batched:
            out = out.squeeze(0 if self.batch_first else 1)
        return out, weights

    def _nested(self, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal):
        """Nested-tensor self-attention ``(N, *, E)``, as torch's fast path takes it (batch first, ``query is key is
        value``, the lengths as the only padding): run on the zero-padded batch with the lengths' padding mask and
        return a nested output of the same layout (the weights, if asked for, padded ``(N, L, S)``)."""
        if not (self.batch_first and query is key and key is value) or key_padding_mask is not None:
            raise InputRuntimeError("argument `query` is a nested tensor: supported for self-attention only (query, "
                                    "key and value the same tensor), batch_first=True and no key_padding_mask (the "
                                    "nested lengths are the padding), as torch's fast path")
        padded, padding, lengths = padded_from_nested(query)
        out, weights = self.forward(padded, padded, padded, key_padding_mask=padding, need_weights=need_weights,
                                    attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                    is_causal=is_causal)
        return nested_like(out, lengths, query), weights

    # -- pieces ---------------------------------------------------------------------------------------------------

    def _split_heads(self, x, parts=1):
        """``(N, L, parts * E)`` (batch first) or ``(L, N, parts * E)`` -> ``(N, H, L, D)`` views, ``parts`` of them
        (q, k, v of a packed projection) or one. Plain view ops (no ``unflatten``, whose Python wrapper cost more
        than the rest of the split)."""
        a, b = x.shape[0], x.shape[1]
        if parts == 1:
            x = x.reshape(a, b, self.num_heads, self.head_dim)
            return x.transpose(1, 2) if self.batch_first else x.permute(1, 2, 0, 3)
        x = x.reshape(a, b, parts, self.num_heads, self.head_dim)
        return (x.permute(2, 0, 3, 1, 4) if self.batch_first else x.permute(2, 1, 3, 0, 4)).unbind(0)

    def _out(self, out):
        """``(N, H, L, D)`` -> output projection, in the module's layout ``(N, L, E)`` or ``(L, N, E)``."""
        out = out.transpose(1, 2) if self.batch_first else out.permute(2, 0, 1, 3)
        out = out.flatten(-2)
        projection = self.out_proj
        return kernels.linear(out, projection.weight, as_input_dtype(projection.bias, out), backend=self.backend)

    def _project(self, query, key, value):
        if self._qkv_same_embed_dim and query is key and key is value:
            # Self-attention: one GEMM for the packed projection, (.., 3E) viewed as q, k and v.
            qkv = kernels.linear(query, self.in_proj_weight, as_input_dtype(self.in_proj_bias, query),
                                 backend=self.backend)
            return self._split_heads(qkv, 3)
        return self._project_q(query), *self._project_kv(key, value)

    def _project_q(self, query):
        e, bias = self.embed_dim, as_input_dtype(self.in_proj_bias, query)
        weight = self.in_proj_weight[:e] if self._qkv_same_embed_dim else self.q_proj_weight
        return self._split_heads(kernels.linear(query, weight, None if bias is None else bias[:e],
                                                backend=self.backend))

    def _project_kv(self, key, value):
        if self._qkv_same_embed_dim and key is value:
            # Cross-attention: one GEMM for the packed k/v projection.
            e, bias = self.embed_dim, as_input_dtype(self.in_proj_bias, key)
            kv = kernels.linear(key, self.in_proj_weight[e:], None if bias is None else bias[e:], backend=self.backend)
            return self._split_heads(kv, 2)
        e, bias = self.embed_dim, as_input_dtype(self.in_proj_bias, key)
        if self._qkv_same_embed_dim:
            w_k, w_v = self.in_proj_weight[e:2 * e], self.in_proj_weight[2 * e:]
        else:
            w_k, w_v = self.k_proj_weight, self.v_proj_weight
        b_k, b_v = (None, None) if bias is None else (bias[e:2 * e], bias[2 * e:])
        return (self._split_heads(kernels.linear(key, w_k, b_k, backend=self.backend)),
                self._split_heads(kernels.linear(value, w_v, b_v, backend=self.backend)))

    def _masks(self, attn_mask, key_padding_mask, q):
        """nn's masks (True = ignore, or additive) -> the kernels' (``attn_mask`` True = keep or additive,
        broadcastable to ``(N, H, L, S)``; ``key_padding_mask`` bool ``(N, S)`` True = padding, or folded into an
        additive ``attn_mask`` when either mask is floating, as torch does)."""
        if attn_mask is not None:
            if attn_mask.dim() == 3:  # (N * H, L, S) -> (N, H, L, S)
                attn_mask = attn_mask.view(-1, self.num_heads, *attn_mask.shape[-2:])
            attn_mask = ~attn_mask if attn_mask.dtype == torch.bool else attn_mask.to(q.dtype)
        if key_padding_mask is None:
            return attn_mask, None
        if key_padding_mask.dtype == torch.bool and (attn_mask is None or attn_mask.dtype == torch.bool):
            return attn_mask, key_padding_mask
        # A floating mask on either side: both become additive, summed (torch's rule for mixed masks).
        if key_padding_mask.dtype == torch.bool:
            key_padding_mask = _additive(key_padding_mask, q.dtype)
        padding = key_padding_mask.to(q.dtype)[:, None, None, :]  # (N, 1, 1, S)
        if attn_mask is None:
            return padding, None
        if attn_mask.dtype == torch.bool:
            attn_mask = _additive(~attn_mask, q.dtype)  # keep-mask by now
        return attn_mask + padding, None

    def _attention_with_weights(self, q, k, v, attn_mask, key_padding_mask, is_causal, dropout_p):
        """``need_weights=True``: the scores ``(N, H, L, S)`` are materialised and normalised by the fused masked
        softmax; the weights returned are the ones applied to ``v`` (after dropout, as torch returns them)."""
        mask = attn_mask
        if key_padding_mask is not None:  # both bool here (see _masks): one keep-mask
            keep = ~key_padding_mask[:, None, None, :]
            mask = keep if mask is None else mask & keep
        scores = q @ k.transpose(-2, -1)
        probs = kernels.masked_softmax(scores, mask, scale=self.head_dim ** -0.5, is_causal=is_causal,
                                       backend=self.backend)
        if dropout_p > 0.0:
            probs = F.dropout(probs, p=dropout_p)
        return probs @ v, probs

    # -- generation -----------------------------------------------------------------------------------------------

    def attend(self, query, cache: AttentionCache | StaticAttentionCache | None = None, memory=None,
               memory_key_padding_mask=None):
        """Attention for the model family and generation (batched inputs in the module's layout; bool masks).

        Without ``memory``: causal self-attention of ``query``; with a ``cache``, ``query`` holds the new positions
        only, attends to the cached ones too, and its keys and values are appended (a ``StaticAttentionCache``:
        written in place, on the device, no dropout: decoding only). With ``memory``: cross-attention
        to ``memory`` (``memory_key_padding_mask``: True = padding), projected into ``cache`` on the first call
        when a cache is given. Returns the attention output, like ``forward(...)[0]``.
        """
        if memory_key_padding_mask is not None and memory_key_padding_mask.dtype != torch.bool:
            raise ValueError("argument `memory_key_padding_mask` must be bool (True = padding); got "
                             f"{memory_key_padding_mask.dtype}")
        dropout_p = self.dropout if self.training else 0.0
        if memory is None:
            q, k, v = self._project(query, query, query)
            if isinstance(cache, StaticAttentionCache):
                cache.append(k, v)  # the keys and values, new ones included, attended bottom-right causally
                return self._out(kernels.attention_with_kv_cache(q, cache.key, cache.value, cache_seqlens=cache.length,
                                                                 is_causal=True, backend=self.backend))
            if cache is not None:
                if cache.key is not None:
                    k, v = torch.cat([cache.key, k], dim=-2), torch.cat([cache.value, v], dim=-2)
                cache.key, cache.value = k, v
            out = decode_attention(q, k, v, causal=True, dropout_p=dropout_p, backend=self.backend)
        else:
            q = self._project_q(query)
            if cache is None:
                k, v = self._project_kv(memory, memory)
            else:
                if cache.key is None:
                    cache.key, cache.value = self._project_kv(memory, memory)
                k, v = cache.key, cache.value
            out = decode_attention(q, k, v, causal=False, key_padding_mask=memory_key_padding_mask,
                                   dropout_p=dropout_p, backend=self.backend)
        return self._out(out)


def padded_from_nested(nested):
    """A nested ``(N, *, E)`` tensor -> its zero-padded ``(N, S, E)`` tensor, the bool padding mask ``(N, S)`` (True =
    padding) and the lengths (host ints: a nested tensor keeps its sizes on the host, so nothing synchronises)."""
    lengths = [t.shape[0] for t in nested.unbind()]
    padded = nested.to_padded_tensor(0.0)
    positions = torch.arange(padded.shape[1], device=padded.device)
    padding = positions[None, :] >= torch.tensor(lengths, device=padded.device)[:, None]
    return padded, padding, lengths


def nested_like(dense, lengths, like):
    """The rows ``dense[i, :lengths[i]]`` as a nested tensor of ``like``'s layout."""
    return torch.nested.as_nested_tensor([dense[i, :n] for i, n in enumerate(lengths)], layout=like.layout)


def _additive(ignore, dtype):
    """Bool mask, True = ignore -> additive float mask (-inf where True, 0 elsewhere)."""
    return torch.zeros(ignore.shape, dtype=dtype, device=ignore.device).masked_fill(ignore, float("-inf"))
