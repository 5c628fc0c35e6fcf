"""Flash attention in Triton: forward (output + log-sum-exp), backward (dQ, dK, dV), key-split decoding, dropout.

Layouts. Every kernel addresses q/k/v/out through ``(batch, head, row)`` element strides with a unit-stride head
dimension, so a ``(B, H, S, D)`` tensor, a slice of a packed qkv projection and a packed varlen ``(total, H, D)``
tensor (seen as ``(1, H, total, D)`` with a zero batch stride and per-sequence row offsets from ``cu_seqlens``) all
take the same path. The log-sum-exp (natural log, fp32) is addressed the same way: ``(B, H, Sq)`` for dense calls,
``(total_q, H)`` for varlen. ``GROUP = H // Hkv`` query heads share one key/value head (GQA/MQA).

Online softmax. Scores are kept in base 2 (``q.k * scale * log2(e)``, additive masks times ``log2(e)``) with a
running row maximum ``m`` and sum ``l``; a row whose scores are all ``-inf`` keeps ``m = -inf`` (subtracted as 0),
``l = 0``, and is written as zeros with ``lse = -inf``. The backward reads ``lse = -inf`` as ``+inf`` so such rows
give ``p = 0`` and zero gradients.

Masks. ``attn_mask`` is read through its ``(B, H, Sq, Sk)`` strides (zero where broadcast): bool/uint8 (non-zero =
take part) or floating (added to the scores); ``key_padding_mask`` ``(B, Sk)`` (non-zero = padding); causal masking
is arithmetic (query ``i`` sees keys ``j <= i + diag``: ``diag = 0`` top-left like SDPA, ``diag = Sk_b - Sq_b``
bottom-right for decoding). A host-side block map (:func:`block_map`) labels each ``(query block, key block)`` tile
0 = every element masked (the tile is skipped), 1 = partly masked (mask loads), 2 = nothing masked (no mask work).

Dropout keep-mask (shared with the native backend, which must reproduce it bit for bit). For batch ``b``, head ``h``,
query row ``i`` and key ``j`` of a ``(B, H, Sq, Sk)`` problem (varlen: ``B = 1``, ``Sq = total_q``, ``Sk = total_k``,
``i``/``j`` the packed row indices)::

    offset = ((b * H + h) * Sq + i) * Sk + j                      # int64
    x, _, _, _ = Philox4x32_10(key=(seed & 0xffffffff, seed >> 32),
                               counter=(offset & 0xffffffff, offset >> 32, 0, 0))
    x = int32(x); u = (~x if x < 0 else x) * 4.6566127342e-10     # Triton's tl.rand
    keep = u >= dropout_p

and kept probabilities are scaled by ``1 / (1 - dropout_p)``. :func:`dropout_keep_mask` returns this mask. The
kernels load ``seed`` from the one-element int64 tensor they are given (on q's device): no host sync, and a captured
CUDA graph reads the seed drawn at each replay.

Determinism. The backward runs one program per key block (dK, dV, looping over the query heads of its group and the
query blocks) and one per query block (dQ); no atomics, so it is deterministic, always.

The code: ``attention_common`` (JIT helpers of the tile loops, tiles and launch configurations, the block map, the
dropout keep-mask), ``attention_forward`` (forward, varlen, key-split decoding) and ``attention_backward`` (dQ, dK,
dV). This module gathers the launchers that the registered ops (``kernels/_ops/attention_triton.py``) call.
"""

from .attention_backward import attention_backward, varlen_backward
from .attention_common import FULL, PARTIAL, SKIP, backward_tiles, block_map, dropout_keep_mask, forward_tiles
from .attention_forward import attention_forward, decode_forward, decode_splits, varlen_forward

__all__ = [
    "FULL", "PARTIAL", "SKIP", "attention_backward", "attention_forward", "backward_tiles", "block_map",
    "decode_forward", "decode_splits", "dropout_keep_mask", "forward_tiles", "varlen_backward", "varlen_forward",
]
