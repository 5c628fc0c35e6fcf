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
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _outputs
from ._config import interpreting, on_device, one_config

LOG2E = 1.4426950408889634
# Tile labels of the block map.
SKIP, PARTIAL, FULL = 0, 1, 2
# MASK_KIND of the kernels.
NO_MASK, BOOL_MASK, ADDITIVE_MASK = 0, 1, 2


# ----------------------------------------------------------------------------------------------------------------------
# Shared pieces of the kernels
# ----------------------------------------------------------------------------------------------------------------------

@triton.jit
def _bounds_and_causal(s, rows, cols, k_len, diag, IS_CAUSAL: tl.constexpr):
    """``-inf`` where the key is past the sequence or (causal) after the query; ``rows``/``cols`` broadcast to s."""
    valid = cols < k_len
    if IS_CAUSAL:
        valid = valid & (cols <= rows + diag)
    return tl.where(valid, s, float("-inf"))


@triton.jit
def _on_edge(start_m, start_n, k_len, diag, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """Whether the (start_m, start_n) tile has keys past the sequence or (causal) above the diagonal; interior
    tiles skip :func:`_bounds_and_causal`."""
    edge = start_n + BLOCK_N > k_len
    if IS_CAUSAL:
        edge = edge | (start_n + BLOCK_N - 1 > start_m + diag)
    return edge


@triton.jit
def _user_masks(s, rows, cols, q_len, k_len, Mask, smm, smn, Kpm, skpn,
                MASK_KIND: tl.constexpr, HAS_KPM: tl.constexpr):
    """Applies attn_mask (pointer already at (b, h)) and key_padding_mask (pointer at b) to base-2 scores ``s``."""
    inside = (rows < q_len) & (cols < k_len)
    if MASK_KIND == 1:
        # Outside the sequence counts as masked (other=0): the backward's tiles run query rows past q_len (q = 0,
        # lse = inf), whose products with a NaN key the mask hides (a NaN times 0 would reach dk and dv).
        keep = tl.load(Mask + rows.to(tl.int64) * smm + cols.to(tl.int64) * smn, mask=inside, other=0)
        s = tl.where(keep != 0, s, float("-inf"))
    if MASK_KIND == 2:
        bias = tl.load(Mask + rows.to(tl.int64) * smm + cols.to(tl.int64) * smn, mask=inside, other=0.0)
        s = s + bias.to(tl.float32) * 1.4426950408889634
    if HAS_KPM:
        pad = tl.load(Kpm + cols * skpn, mask=cols < k_len, other=0)
        s = tl.where(pad != 0, float("-inf"), s)
    return s


@triton.jit
def _keep(seed, dropout_p, rng_rows, cols, rng_sk):
    """Dropout keep-mask at int64 counters ``rng_rows * rng_sk + cols`` (module docstring), Philox4x32-10."""
    offset = rng_rows * rng_sk + cols
    lo = offset.to(tl.uint32)  # truncation: the low word, as tl.randint does
    hi = (offset >> 32).to(tl.uint32)
    zero = lo * 0
    x, _, _, _ = tl.philox(seed, lo, hi, zero, zero)
    return tl.uint_to_uniform_float(x) >= dropout_p


@triton.jit
def _sequence(b, CuSeqQ, CuSeqK, SeqLensK, seqlen_q, seqlen_k,
              VARLEN: tl.constexpr, HAS_SEQLENS_K: tl.constexpr, CAUSAL_BOTTOM_RIGHT: tl.constexpr):
    """Row offsets and lengths of sequence ``b`` (varlen: from cu_seqlens; decoding: cache_seqlens) and the causal
    diagonal: query ``i`` sees keys ``j <= i + diag``."""
    if VARLEN:
        q_start = tl.load(CuSeqQ + b).to(tl.int64)
        q_len = (tl.load(CuSeqQ + b + 1) - q_start).to(tl.int32)
        k_start = tl.load(CuSeqK + b).to(tl.int64)
        k_len = (tl.load(CuSeqK + b + 1) - k_start).to(tl.int32)
    else:
        q_start = tl.full([], 0, tl.int64)  # int64 like the varlen offsets: row * stride products stay exact
        k_start = tl.full([], 0, tl.int64)
        q_len = seqlen_q
        k_len = seqlen_k
        if HAS_SEQLENS_K:
            k_len = tl.minimum(tl.load(SeqLensK + b).to(tl.int32), seqlen_k)
    diag = 0
    if CAUSAL_BOTTOM_RIGHT:
        diag = k_len - q_len
    return q_start, q_len, k_start, k_len, diag


# ----------------------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------------------

@triton.jit
def _forward_tiles(acc, l_i, m_i, q, start, stop, k_base, v_base, skn, svn, offs_n, offs_d, d_in, rows, q_len, k_len,
                   diag, mask_base, smm, smn, kpm_base, skpn, map_base, sbn, qk_scale, dropout_p, seed, rng_rows,
                   k_start, rng_sk, BLOCK_N: tl.constexpr, MASK_KIND: tl.constexpr, HAS_KPM: tl.constexpr,
                   IS_CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, EDGE: tl.constexpr):
    """Online softmax over the key tiles [start, stop): updates (acc, l, m). Only EDGE tiles apply the bounds and
    causal masks; user masks apply on tiles the block map labels PARTIAL, and SKIP tiles are passed over."""
    for start_n in range(start, stop, BLOCK_N):
        flag = 2
        if MASK_KIND != 0 or HAS_KPM:
            flag = tl.load(map_base + (start_n // BLOCK_N) * sbn)
        if flag != 0:
            cols = (start_n + offs_n)[None, :]
            key_rows = tl.cast(start_n, tl.int64) + offs_n  # int64: key row * stride can pass 2^31
            if EDGE:
                k = tl.load(k_base + key_rows[None, :] * skn + offs_d[:, None],
                            mask=((start_n + offs_n) < k_len)[None, :] & d_in[:, None], other=0.0)
            else:
                k = tl.load(k_base + key_rows[None, :] * skn + offs_d[:, None], mask=d_in[:, None], other=0.0)
            s = tl.dot(q, k) * qk_scale  # (BLOCK_M, BLOCK_N), base 2
            if EDGE:
                s = _bounds_and_causal(s, rows, cols, k_len, diag, IS_CAUSAL)
            if MASK_KIND != 0 or HAS_KPM:
                if flag == 1:
                    s = _user_masks(s, rows, cols, q_len, k_len, mask_base, smm, smn, kpm_base, skpn,
                                    MASK_KIND, HAS_KPM)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows masked so far: p = 0, not NaN
            p = tl.math.exp2(s - m_sub[:, None])
            alpha = tl.math.exp2(m_i - m_sub)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            if DROPOUT:
                p = tl.where(_keep(seed, dropout_p, rng_rows, k_start + cols, rng_sk), p, 0.0)
            if EDGE:
                v = tl.load(v_base + key_rows[:, None] * svn + offs_d[None, :],
                            mask=((start_n + offs_n) < k_len)[:, None] & d_in[None, :], other=0.0)
            else:
                v = tl.load(v_base + key_rows[:, None] * svn + offs_d[None, :], mask=d_in[None, :], other=0.0)
            acc = tl.dot(p.to(v.dtype), v, acc)
            m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _forward_kernel(
    Q, K, V, Out, Lse, Mask, Kpm, BlockMap, CuSeqQ, CuSeqK, SeqLensK,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som,
    slb, slh, slm, split_so, split_sl,
    smb, smh, smm, smn, skpb, skpn, sbb, sbh, sbm, sbn,
    H, GROUP, seqlen_q, seqlen_k, k_chunk, qk_scale, dropout_p, Seed, rng_sq, rng_sk,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MASK_KIND: tl.constexpr, HAS_KPM: tl.constexpr, IS_CAUSAL: tl.constexpr, CAUSAL_BOTTOM_RIGHT: tl.constexpr,
    VARLEN: tl.constexpr, HAS_SEQLENS_K: tl.constexpr, DROPOUT: tl.constexpr, SPLIT: tl.constexpr,
):
    """One program: BLOCK_M query rows of one (batch, head), keys [split * k_chunk, (split + 1) * k_chunk).
    Without SPLIT it writes the normalised output and lse; with SPLIT, fp32 partials for :func:`_combine_kernel`."""
    seed = tl.load(Seed) if DROPOUT else 0  # the Philox seed, read on the device (no host sync)
    pid_bh = tl.program_id(0)  # (batch, head) on axis 0, whose limit is 2^31 - 1 (axes 1 and 2 stop at 65535)
    pid_m = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = pid_bh // H
    h = (pid_bh % H).to(tl.int64)  # int64: h * stride_h passes 2^31 once a batch element holds 2^31 elements
    q_start, q_len, k_start, k_len, diag = _sequence(b, CuSeqQ, CuSeqK, SeqLensK, seqlen_q, seqlen_k,
                                                     VARLEN, HAS_SEQLENS_K, CAUSAL_BOTTOM_RIGHT)
    if pid_m * BLOCK_M >= q_len:
        return
    b64 = b.to(tl.int64)
    hk = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_in = offs_d < HEAD_DIM
    rows = offs_m[:, None]

    q = tl.load(Q + b64 * sqb + h * sqh + (q_start + offs_m)[:, None] * sqm + offs_d[None, :],
                mask=(offs_m < q_len)[:, None] & d_in[None, :], other=0.0)
    k_base = K + b64 * skb + hk * skh + k_start * skn
    v_base = V + b64 * svb + hk * svh + k_start * svn
    mask_base = Mask + b64 * smb + h * smh
    kpm_base = Kpm + b64 * skpb
    map_base = BlockMap + b64 * sbb + h * sbh + pid_m * sbm
    rng_rows = ((b64 * (1 - VARLEN) * H + h) * rng_sq + q_start + offs_m)[:, None]

    lo = pid_s * k_chunk
    hi = tl.minimum(k_len, lo + k_chunk)
    if IS_CAUSAL:
        hi = tl.minimum(hi, (pid_m + 1) * BLOCK_M + diag)

    # Tiles wholly inside the sequence and (causal) below the diagonal come first, in a loop without bounds or
    # causal masks (no branch in its body, so Triton can pipeline its loads); the edge tiles follow.
    mid = (k_len // BLOCK_N) * BLOCK_N
    if IS_CAUSAL:
        mid = tl.minimum(mid, ((pid_m * BLOCK_M + diag + 1) // BLOCK_N) * BLOCK_N)
    mid = tl.maximum(lo, tl.minimum(mid, hi))
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    acc, l_i, m_i = _forward_tiles(acc, l_i, m_i, q, lo, mid, k_base, v_base, skn, svn, offs_n, offs_d, d_in, rows,
                                   q_len, k_len, diag, mask_base, smm, smn, kpm_base, skpn, map_base, sbn, qk_scale,
                                   dropout_p, seed, rng_rows, k_start, rng_sk,
                                   BLOCK_N, MASK_KIND, HAS_KPM, IS_CAUSAL, DROPOUT, False)
    acc, l_i, m_i = _forward_tiles(acc, l_i, m_i, q, mid, hi, k_base, v_base, skn, svn, offs_n, offs_d, d_in, rows,
                                   q_len, k_len, diag, mask_base, smm, smn, kpm_base, skpn, map_base, sbn, qk_scale,
                                   dropout_p, seed, rng_rows, k_start, rng_sk,
                                   BLOCK_N, MASK_KIND, HAS_KPM, IS_CAUSAL, DROPOUT, True)

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    if DROPOUT:
        out = out * (1.0 / (1.0 - dropout_p))
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    row_in = offs_m < q_len
    split = pid_s.to(tl.int64)  # int64: split * split stride can pass 2^31
    tl.store(Out + split * split_so + b64 * sob + h * soh + (q_start + offs_m)[:, None] * som + offs_d[None, :],
             out.to(Out.dtype.element_ty), mask=row_in[:, None] & d_in[None, :])
    tl.store(Lse + split * split_sl + b64 * slb + h * slh + (q_start + offs_m) * slm, lse, mask=row_in)


@triton.jit
def _combine_kernel(Part, PartLse, Out, Lse, n_splits, split_so, split_sl, rows,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    """Merges the key-split partials of decoding: lse = logsumexp_s(lse_s), out = sum_s exp(lse_s - lse) * out_s.
    Partials are (splits, rows, D) fp32 / (splits, rows); Out (rows, D) contiguous, Lse (rows,)."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    r_in = offs_r < rows
    io = r_in[:, None] & (offs_d < HEAD_DIM)[None, :]
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    for s in range(n_splits):
        at_split = tl.cast(s, tl.int64)  # int64: split * split stride can pass 2^31
        m = tl.maximum(m, tl.load(PartLse + at_split * split_sl + offs_r, mask=r_in, other=float("-inf")))
    m_sub = tl.where(m == float("-inf"), 0.0, m)
    total = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for s in range(n_splits):
        at_split = tl.cast(s, tl.int64)
        w = tl.exp(tl.load(PartLse + at_split * split_sl + offs_r, mask=r_in, other=float("-inf")) - m_sub)
        part = tl.load(Part + at_split * split_so + offs_r.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :], mask=io,
                       other=0.0)
        total += w
        acc += w[:, None] * part
    empty = total == 0.0
    out = acc / tl.where(empty, 1.0, total)[:, None]
    tl.store(Out + offs_r.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :], out.to(Out.dtype.element_ty), mask=io)
    tl.store(Lse + offs_r, tl.where(empty, float("-inf"), m_sub + tl.log(tl.where(empty, 1.0, total))), mask=r_in)


# ----------------------------------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------------------------------

@triton.jit
def _delta_kernel(Out, DOut, Delta, rows, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr):
    """delta = rowsum(dO * O) in fp32, over contiguous (rows, D) out / grad_out (row order = the lse layout)."""
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    io = (offs_r < rows)[:, None] & (offs_d < HEAD_DIM)[None, :]
    at = offs_r.to(tl.int64)[:, None] * HEAD_DIM + offs_d[None, :]
    o = tl.load(Out + at, mask=io, other=0.0).to(tl.float32)
    do = tl.load(DOut + at, mask=io, other=0.0).to(tl.float32)
    tl.store(Delta + offs_r, tl.sum(o * do, 1), mask=offs_r < rows)


@triton.jit
def _dkdv_kernel(
    Q, K, V, DO, Lse, Delta, DK, DV, Mask, Kpm, BlockMap, CuSeqQ, CuSeqK,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdob, sdoh, sdom, sdkb, sdkh, sdkn,
    slb, slh, slm,
    smb, smh, smm, smn, skpb, skpn, sbb, sbh, sbm, sbn,
    H, HKV, GROUP, seqlen_q, seqlen_k, qk_scale, sm_scale, dropout_p, Seed, rng_sq, rng_sk,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MASK_KIND: tl.constexpr, HAS_KPM: tl.constexpr, IS_CAUSAL: tl.constexpr, VARLEN: tl.constexpr,
    DROPOUT: tl.constexpr,
):
    """One program: dK, dV of BLOCK_N keys of one (batch, kv head), summed over the GROUP query heads that share it.
    Works on transposed tiles: sT = k q^T (BLOCK_N, BLOCK_M), so dV += pT dO and dK += dsT q are plain dots."""
    seed = tl.load(Seed) if DROPOUT else 0  # the Philox seed, read on the device (no host sync)
    pid_bh = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = pid_bh // HKV
    hk = (pid_bh % HKV).to(tl.int64)  # int64 (and h below): head * stride_h can pass 2^31
    q_start, q_len, k_start, k_len, diag = _sequence(b, CuSeqQ, CuSeqK, CuSeqK, seqlen_q, seqlen_k,
                                                     VARLEN, False, False)
    start_n = pid_n * BLOCK_N
    if start_n >= k_len:
        return
    b64 = b.to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_in = offs_d < HEAD_DIM
    n_in = offs_n < k_len
    cols = offs_n[:, None]  # keys index the rows of the transposed tiles
    kv_io = n_in[:, None] & d_in[None, :]
    k = tl.load(K + b64 * skb + hk * skh + (k_start + offs_n)[:, None] * skn + offs_d[None, :], mask=kv_io, other=0.0)
    v = tl.load(V + b64 * svb + hk * svh + (k_start + offs_n)[:, None] * svn + offs_d[None, :], mask=kv_io, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo = 0
    if IS_CAUSAL:
        lo = (tl.maximum(start_n - diag, 0) // BLOCK_M) * BLOCK_M
    for g in range(GROUP):
        h = hk * GROUP + g
        q_base = Q + b64 * sqb + h * sqh + q_start * sqm
        do_base = DO + b64 * sdob + h * sdoh + q_start * sdom
        lse_base = Lse + b64 * slb + h * slh + q_start * slm
        delta_base = Delta + b64 * slb + h * slh + q_start * slm
        mask_base = Mask + b64 * smb + h * smh
        kpm_base = Kpm + b64 * skpb
        map_base = BlockMap + b64 * sbb + h * sbh + pid_n * sbn
        rng_base = (b64 * (1 - VARLEN) * H + h) * rng_sq + q_start
        for start_m in range(lo, q_len, BLOCK_M):
            flag = 2
            if MASK_KIND != 0 or HAS_KPM:
                flag = tl.load(map_base + (start_m // BLOCK_M) * sbm)
            if flag != 0:
                offs_m = start_m + tl.arange(0, BLOCK_M)
                m_in = offs_m < q_len
                rows = offs_m[None, :]
                q_io = m_in[:, None] & d_in[None, :]
                q_rows = offs_m.to(tl.int64)[:, None]  # int64: query row * stride can pass 2^31
                q = tl.load(q_base + q_rows * sqm + offs_d[None, :], mask=q_io, other=0.0)
                do = tl.load(do_base + q_rows * sdom + offs_d[None, :], mask=q_io, other=0.0)
                lse = tl.load(lse_base + offs_m * slm, mask=m_in, other=float("inf"))
                lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
                delta = tl.load(delta_base + offs_m * slm, mask=m_in, other=0.0)
                sT = tl.dot(k, tl.trans(q)) * qk_scale
                if _on_edge(start_m, start_n, k_len, diag, BLOCK_M, BLOCK_N, IS_CAUSAL):
                    sT = _bounds_and_causal(sT, rows, cols, k_len, diag, IS_CAUSAL)
                if MASK_KIND != 0 or HAS_KPM:
                    if flag == 1:
                        sT = _user_masks(sT, rows, cols, q_len, k_len, mask_base, smm, smn, kpm_base, skpn,
                                         MASK_KIND, HAS_KPM)
                pT = tl.math.exp2(sT - lse[None, :])
                dpT = tl.dot(v, tl.trans(do))
                if DROPOUT:
                    keep = _keep(seed, dropout_p, rng_base + rows, k_start + cols, rng_sk)
                    scale_keep = 1.0 / (1.0 - dropout_p)
                    dv = tl.dot(tl.where(keep, pT * scale_keep, 0.0).to(do.dtype), do, dv)
                    dpT = tl.where(keep, dpT * scale_keep, 0.0)
                else:
                    dv = tl.dot(pT.to(do.dtype), do, dv)
                dsT = pT * (dpT - delta[None, :])
                dk = tl.dot(dsT.to(q.dtype), q, dk)
    dk = dk * sm_scale
    tl.store(DK + b64 * sdkb + hk * sdkh + (k_start + offs_n)[:, None] * sdkn + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=kv_io)
    tl.store(DV + b64 * sdkb + hk * sdkh + (k_start + offs_n)[:, None] * sdkn + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kv_io)


@triton.jit
def _dq_kernel(
    Q, K, V, DO, Lse, Delta, DQ, Mask, Kpm, BlockMap, CuSeqQ, CuSeqK,
    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdob, sdoh, sdom, sdqb, sdqh, sdqm,
    slb, slh, slm,
    smb, smh, smm, smn, skpb, skpn, sbb, sbh, sbm, sbn,
    H, GROUP, seqlen_q, seqlen_k, qk_scale, sm_scale, dropout_p, Seed, rng_sq, rng_sk,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    MASK_KIND: tl.constexpr, HAS_KPM: tl.constexpr, IS_CAUSAL: tl.constexpr, VARLEN: tl.constexpr,
    DROPOUT: tl.constexpr,
):
    """One program: dQ of BLOCK_M query rows of one (batch, head), looping over the key blocks."""
    seed = tl.load(Seed) if DROPOUT else 0  # the Philox seed, read on the device (no host sync)
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b = pid_bh // H
    h = (pid_bh % H).to(tl.int64)  # int64: h * stride_h passes 2^31 once a batch element holds 2^31 elements
    q_start, q_len, k_start, k_len, diag = _sequence(b, CuSeqQ, CuSeqK, CuSeqK, seqlen_q, seqlen_k,
                                                     VARLEN, False, False)
    if pid_m * BLOCK_M >= q_len:
        return
    b64 = b.to(tl.int64)
    hk = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_in = offs_d < HEAD_DIM
    m_in = offs_m < q_len
    rows = offs_m[:, None]
    q_io = m_in[:, None] & d_in[None, :]
    q = tl.load(Q + b64 * sqb + h * sqh + (q_start + offs_m)[:, None] * sqm + offs_d[None, :], mask=q_io, other=0.0)
    do = tl.load(DO + b64 * sdob + h * sdoh + (q_start + offs_m)[:, None] * sdom + offs_d[None, :], mask=q_io,
                 other=0.0)
    row_at = b64 * slb + h * slh + (q_start + offs_m) * slm
    lse = tl.load(Lse + row_at, mask=m_in, other=float("inf"))
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
    delta = tl.load(Delta + row_at, mask=m_in, other=0.0)
    k_base = K + b64 * skb + hk * skh + k_start * skn
    v_base = V + b64 * svb + hk * svh + k_start * svn
    mask_base = Mask + b64 * smb + h * smh
    kpm_base = Kpm + b64 * skpb
    map_base = BlockMap + b64 * sbb + h * sbh + pid_m * sbm
    rng_rows = ((b64 * (1 - VARLEN) * H + h) * rng_sq + q_start + offs_m)[:, None]
    hi = k_len
    if IS_CAUSAL:
        hi = tl.minimum(hi, (pid_m + 1) * BLOCK_M + diag)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        flag = 2
        if MASK_KIND != 0 or HAS_KPM:
            flag = tl.load(map_base + (start_n // BLOCK_N) * sbn)
        if flag != 0:
            cols = (start_n + offs_n)[None, :]
            kv_io = ((start_n + offs_n) < k_len)[:, None] & d_in[None, :]
            key_rows = (tl.cast(start_n, tl.int64) + offs_n)[:, None]  # int64: key row * stride can pass 2^31
            k = tl.load(k_base + key_rows * skn + offs_d[None, :], mask=kv_io, other=0.0)
            v = tl.load(v_base + key_rows * svn + offs_d[None, :], mask=kv_io, other=0.0)
            s = tl.dot(q, tl.trans(k)) * qk_scale
            if _on_edge(pid_m * BLOCK_M, start_n, k_len, diag, BLOCK_M, BLOCK_N, IS_CAUSAL):
                s = _bounds_and_causal(s, rows, cols, k_len, diag, IS_CAUSAL)
            if MASK_KIND != 0 or HAS_KPM:
                if flag == 1:
                    s = _user_masks(s, rows, cols, q_len, k_len, mask_base, smm, smn, kpm_base, skpn,
                                    MASK_KIND, HAS_KPM)
            p = tl.math.exp2(s - lse[:, None])
            dp = tl.dot(do, tl.trans(v))
            if DROPOUT:
                keep = _keep(seed, dropout_p, rng_rows, k_start + cols, rng_sk)
                dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(k.dtype), k, dq)
    dq = dq * sm_scale
    tl.store(DQ + b64 * sdqb + h * sdqh + (q_start + offs_m)[:, None] * sdqm + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=q_io)


@triton.jit
def _keep_mask_kernel(Keep, seed, dropout_p, rows, Sk, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Writes the dropout keep-mask of a (rows = B * H * Sq, Sk) problem (the counters of the module docstring)."""
    offs_r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)[:, None]
    offs_c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C))[None, :]
    keep = _keep(seed, dropout_p, offs_r, offs_c, Sk)
    tl.store(Keep + offs_r * Sk + offs_c, keep.to(tl.int8), mask=(offs_r < rows) & (offs_c < Sk))


# ----------------------------------------------------------------------------------------------------------------------
# Configurations: fixed tiles per head dim and GPU, autotuned warps/stages (a fixed config under the interpreter)
# ----------------------------------------------------------------------------------------------------------------------

def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)


def forward_tiles(head_dim: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) of the forward. Tiles are fixed per head dim (not tuned) because the block map of a mask
    is computed for them; sm_80 and sm_90 both hold a 128-row query tile up to head dim 128."""
    if interpreting() or device.type != "cuda":
        return 32, 32  # the interpreter runs programs one by one: fewer, larger tiles are faster
    if head_dim <= 128:
        return 128, 64
    return 64, 32


def backward_tiles(head_dim: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) shared by the dK/dV and dQ kernels (one block map serves both)."""
    if interpreting() or device.type != "cuda":
        return 32, 32
    if head_dim <= 64:
        return 64, 128 if _capability(device)[0] >= 9 else 64
    if head_dim <= 128:
        return 64, 64
    return 32, 32


def _configs(stages, warps):
    return [triton.Config({}, num_warps=w, num_stages=s) for w in warps for s in stages]


_KEY = ["HEAD_DIM", "BLOCK_M", "BLOCK_N", "MASK_KIND", "HAS_KPM", "IS_CAUSAL", "VARLEN", "DROPOUT"]
_tuned = {}


def _row_blocks(rows: int, block: int, name: str) -> int:
    """Blocks of rows per sequence: grid axis 1 (the (batch, head) pairs take axis 0), at most 65535 of them."""
    blocks = triton.cdiv(rows, block)
    if blocks > 65535:
        raise ValueError(f"argument `{name}` has {rows} rows per sequence; the Triton kernels support up to "
                         f"{65535 * block} at this head dim")
    return blocks


# KERNELS_TRITON_ONE_CONFIG=1: the warps/stages every kernel compiles with (valid for each tile of the tables above).
ONE_CONFIG_WARPS, ONE_CONFIG_STAGES = 4, 2


def _launcher(kernel, name, stages, warps, key):
    """``launch(grid, args, **meta)``: the kernel autotuned over warps/stages on a GPU (keyed on its compile-time
    switches), with one configuration under KERNELS_TRITON_ONE_CONFIG=1, or with a fixed small configuration under
    the interpreter. Each launch runs on the device of its first tensor argument."""
    if interpreting():
        def launch_fixed(grid, args, **meta):
            with on_device(args[0]):
                kernel[grid](*args, num_warps=1, num_stages=1, **meta)
        return launch_fixed
    if one_config():
        def launch_one(grid, args, **meta):
            with on_device(args[0]):
                kernel[grid](*args, num_warps=ONE_CONFIG_WARPS, num_stages=ONE_CONFIG_STAGES, **meta)
        return launch_one
    if name not in _tuned:
        _tuned[name] = triton.autotune(configs=_configs(stages, warps), key=key)(kernel)
    tuned = _tuned[name]

    def launch_tuned(grid, args, **meta):
        with on_device(args[0]):
            tuned[grid](*args, **meta)
    return launch_tuned


# Four configurations per kernel keep first-call tuning short (each is compiled); the tiles are fixed above.
def _forward_launcher():
    return _launcher(_forward_kernel, "forward", (2, 3), (4, 8), _KEY + ["SPLIT"])


def _dkdv_launcher():
    return _launcher(_dkdv_kernel, "dkdv", (1, 2), (4, 8), _KEY)


def _dq_launcher():
    return _launcher(_dq_kernel, "dq", (1, 2), (4, 8), _KEY)


# ----------------------------------------------------------------------------------------------------------------------
# Host helpers
# ----------------------------------------------------------------------------------------------------------------------

def _compact(mask: torch.Tensor) -> torch.Tensor:
    """The stored part of a broadcast (stride-0) view: size 1 where the stride is 0."""
    index = tuple(slice(0, 1) if st == 0 else slice(None) for st in mask.stride())
    return mask[index]


def _tile_reduce(x: torch.Tensor, block_m: int, block_n: int, fill: bool, reduce_all: bool) -> torch.Tensor:
    """any/all of a bool (..., Sq, Sk) tensor over (block_m, block_n) tiles; a dimension of size 1 stays one tile."""
    *lead, sq, sk = x.shape
    bm = block_m if sq > 1 else 1
    bn = block_n if sk > 1 else 1
    nq, nk = triton.cdiv(sq, bm), triton.cdiv(sk, bn)
    if (nq * bm, nk * bn) != (sq, sk):
        padded = x.new_full((*lead, nq * bm, nk * bn), fill)
        padded[..., :sq, :sk] = x
        x = padded
    tiles = x.view(torch.uint8).reshape(*lead, nq, bm, nk, bn)  # one min/max reduction over both tile dims
    return (tiles.amin(dim=(-3, -1)) if reduce_all else tiles.amax(dim=(-3, -1))).bool()


def block_map(attn_mask, key_padding_mask, batch, heads, seqlen_q, seqlen_k, block_m, block_n):
    """int8 tile labels (SKIP / PARTIAL / FULL), a ``(B, H, nq, nk)`` view with zero strides where the masks
    broadcast. Conservative: a tile is skipped only when one of the masks alone masks all of it."""
    nq, nk = triton.cdiv(seqlen_q, block_m), triton.cdiv(seqlen_k, block_n)
    any_keep, all_plain = None, None
    if attn_mask is not None:
        compact = _compact(attn_mask)
        if compact.dtype == torch.bool:
            keep, plain = compact, compact
        else:
            keep, plain = ~torch.isneginf(compact), compact == 0
        any_keep = _tile_reduce(keep, block_m, block_n, False, False)
        all_plain = _tile_reduce(plain, block_m, block_n, True, True)
    if key_padding_mask is not None:
        kept = ~key_padding_mask[:, None, None, :]
        pad_any = _tile_reduce(kept, block_m, block_n, False, False)
        pad_all = _tile_reduce(kept, block_m, block_n, True, True)
        any_keep = pad_any if any_keep is None else any_keep & pad_any
        all_plain = pad_all if all_plain is None else all_plain & pad_all
    labels = torch.where(any_keep, torch.where(all_plain, FULL, PARTIAL), SKIP).to(torch.int8)
    return labels.expand(batch, heads, nq, nk)


def _mask_args(attn_mask, key_padding_mask, dummy):
    """(Mask, its 4 strides, MASK_KIND, Kpm, its 2 strides) with uint8 views of bool masks."""
    if attn_mask is None:
        mask, mask_strides, kind = dummy, (0, 0, 0, 0), NO_MASK
    elif attn_mask.dtype == torch.bool:
        mask, mask_strides, kind = attn_mask.view(torch.uint8), attn_mask.stride(), BOOL_MASK
    else:
        mask, mask_strides, kind = attn_mask, attn_mask.stride(), ADDITIVE_MASK
    if key_padding_mask is None:
        kpm, kpm_strides = dummy, (0, 0)
    else:
        kpm, kpm_strides = key_padding_mask.view(torch.uint8), key_padding_mask.stride()
    return mask, mask_strides, kind, kpm, kpm_strides


def _unit_last(x: torch.Tensor) -> torch.Tensor:
    """Kernels need a unit stride along the head dimension; anything else is copied."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def dropout_keep_mask(seed: int, shape, dropout_p: float, device=None) -> torch.Tensor:
    """The bool keep-mask ``(B, H, Sq, Sk)`` the kernels use for ``seed`` (module docstring), e.g. to pass as the
    reference's ``dropout_mask``. Varlen calls use ``shape = (1, H, total_q, total_k)``."""
    batch, heads, sq, sk = shape
    rows = batch * heads * sq
    keep = torch.empty((rows, sk), dtype=torch.int8, device=device)
    if keep.numel():
        grid = (triton.cdiv(rows, 64), triton.cdiv(sk, 128))
        with on_device(keep):
            _keep_mask_kernel[grid](keep, seed, dropout_p, rows, sk, BLOCK_R=64, BLOCK_C=128)
    return keep.bool().reshape(batch, heads, sq, sk)


# ----------------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------------

def _forward(q, k, v, out, lse, lse_strides, *, batch, seqlen_q, seqlen_k, attn_mask=None, key_padding_mask=None,
             cu_seqlens_q=None, cu_seqlens_k=None, cache_seqlens=None, dropout_p=0.0, is_causal=False,
             bottom_right=False, scale, seed=None, rng_shape, splits=1, split_strides=(0, 0)):
    """Launches the forward on 4-D ``(batch, head, row, D)`` views (see the module docstring)."""
    heads, head_dim = q.shape[1], q.shape[3]
    block_m, block_n = forward_tiles(head_dim, q.device)
    dummy = q
    mask, ms, kind, kpm, kps = _mask_args(attn_mask, key_padding_mask, dummy)
    if kind != NO_MASK or key_padding_mask is not None:
        bmap = block_map(attn_mask, key_padding_mask, batch, heads, seqlen_q, seqlen_k, block_m, block_n)
        bs = bmap.stride()
    else:
        bmap, bs = dummy, (0, 0, 0, 0)
    k_chunk = triton.cdiv(triton.cdiv(max(seqlen_k, 1), splits), block_n) * block_n
    grid = (batch * heads, _row_blocks(seqlen_q, block_m, "q"), splits)
    st = _strides(cu_seqlens_q is not None)
    _forward_launcher()(
        grid,
        args=(q, k, v, out, lse, mask, kpm, bmap,
              cu_seqlens_q if cu_seqlens_q is not None else dummy,
              cu_seqlens_k if cu_seqlens_k is not None else dummy,
              cache_seqlens if cache_seqlens is not None else dummy,
              *st(q), *st(k), *st(v), *st(out), *lse_strides, *split_strides, *ms, *kps, *bs,
              heads, heads // k.shape[1], seqlen_q, seqlen_k, k_chunk, scale * LOG2E, dropout_p,
              dummy if seed is None else seed,
              rng_shape[0], rng_shape[1]),
        HEAD_DIM=head_dim, BLOCK_D=_block_d(head_dim), BLOCK_M=block_m, BLOCK_N=block_n, MASK_KIND=kind,
        HAS_KPM=key_padding_mask is not None, IS_CAUSAL=is_causal, CAUSAL_BOTTOM_RIGHT=bottom_right,
        VARLEN=cu_seqlens_q is not None, HAS_SEQLENS_K=cache_seqlens is not None, DROPOUT=dropout_p > 0.0,
        SPLIT=splits > 1,
    )


def _backward(grad_out, q, k, v, out, lse, lse_strides, dq, dk, dv, *, batch, seqlen_q, seqlen_k, attn_mask=None,
              key_padding_mask=None, cu_seqlens_q=None, cu_seqlens_k=None, dropout_p=0.0, is_causal=False, scale,
              seed=None, rng_shape):
    """Launches delta = rowsum(dO * O), then the dK/dV and dQ kernels, on 4-D views like :func:`_forward`.
    ``out``/``grad_out`` are contiguous in the row order of ``lse``; dk/dv share strides."""
    heads, hkv, head_dim = q.shape[1], k.shape[1], q.shape[3]
    block_d = _block_d(head_dim)
    delta = torch.empty(lse.shape, dtype=torch.float32, device=q.device)
    rows = lse.numel()
    block_r = 16 if interpreting() else 64
    with on_device(out):
        _delta_kernel[(triton.cdiv(rows, block_r),)](out, grad_out, delta, rows, HEAD_DIM=head_dim, BLOCK_D=block_d,
                                                     BLOCK_R=block_r)
    block_m, block_n = backward_tiles(head_dim, q.device)
    dummy = q
    mask, ms, kind, kpm, kps = _mask_args(attn_mask, key_padding_mask, dummy)
    if kind != NO_MASK or key_padding_mask is not None:
        bmap = block_map(attn_mask, key_padding_mask, batch, heads, seqlen_q, seqlen_k, block_m, block_n)
        bs = bmap.stride()
    else:
        bmap, bs = dummy, (0, 0, 0, 0)
    do_view = grad_out.as_strided(out.shape, out.stride())  # contiguous like out
    st = _strides(cu_seqlens_q is not None)
    cu_q = cu_seqlens_q if cu_seqlens_q is not None else dummy
    cu_k = cu_seqlens_k if cu_seqlens_k is not None else dummy
    common = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n, MASK_KIND=kind,
                  HAS_KPM=key_padding_mask is not None, IS_CAUSAL=is_causal, VARLEN=cu_seqlens_q is not None,
                  DROPOUT=dropout_p > 0.0)
    strides = (*st(q), *st(k), *st(v), *st(do_view))
    _dkdv_launcher()(
        (batch * hkv, _row_blocks(seqlen_k, block_n, "k")),
        args=(q, k, v, do_view, lse, delta, dk, dv, mask, kpm, bmap, cu_q, cu_k, *strides,
              *st(dk), *lse_strides, *ms, *kps, *bs,
              heads, hkv, heads // hkv, seqlen_q, seqlen_k, scale * LOG2E, scale, dropout_p,
              dummy if seed is None else seed,
              rng_shape[0], rng_shape[1]),
        **common)
    _dq_launcher()(
        (batch * heads, _row_blocks(seqlen_q, block_m, "q")),
        args=(q, k, v, do_view, lse, delta, dq, mask, kpm, bmap, cu_q, cu_k, *strides,
              *st(dq), *lse_strides, *ms, *kps, *bs,
              heads, heads // hkv, seqlen_q, seqlen_k, scale * LOG2E, scale, dropout_p,
              dummy if seed is None else seed,
              rng_shape[0], rng_shape[1]),
        **common)


def _strides(varlen: bool):
    """(batch, head, row) element strides of a 4-D view; varlen views have batch stride 0 (rows come from
    cu_seqlens)."""
    def strides(x):
        return (0 if varlen else x.stride(0)), x.stride(1), x.stride(2)
    return strides


def attention_forward(q, k, v, attn_mask, key_padding_mask, dropout_p, is_causal, scale, seed):
    """Dense attention: q ``(B, H, Sq, D)``, k/v ``(B, Hkv, Sk, D)``, attn_mask a ``(B, H, Sq, Sk)`` (broadcast) view
    or None, key_padding_mask bool ``(B, Sk)`` or None. Returns out ``(B, H, Sq, D)`` (q's dtype) and lse
    ``(B, H, Sq)`` fp32."""
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    batch, heads, sq, head_dim = q.shape
    sk = k.shape[2]
    out = _outputs.empty((batch, heads, sq, head_dim), dtype=q.dtype, device=q.device)
    lse = _outputs.empty((batch, heads, sq), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    if sk == 0:
        return out.zero_(), lse.fill_(float("-inf"))
    _forward(q, k, v, out, lse, lse.stride(), batch=batch, seqlen_q=sq, seqlen_k=sk, attn_mask=attn_mask,
             key_padding_mask=key_padding_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
             seed=seed, rng_shape=(sq, sk))
    return out, lse


def attention_backward(grad_out, q, k, v, out, lse, attn_mask, key_padding_mask, dropout_p, is_causal, scale, seed):
    """Gradients of :func:`attention_forward`: dq, dk, dv (the dtypes and shapes of q, k, v, contiguous)."""
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    batch, heads, sq, _ = q.shape
    sk = k.shape[2]
    dq = _outputs.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = _outputs.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = _outputs.empty(v.shape, dtype=v.dtype, device=v.device)
    if q.numel() == 0 or sk == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    _backward(grad_out.contiguous(), q, k, v, out.contiguous(), lse, lse.stride(), dq, dk, dv, batch=batch,
              seqlen_q=sq, seqlen_k=sk, attn_mask=attn_mask, key_padding_mask=key_padding_mask, dropout_p=dropout_p,
              is_causal=is_causal, scale=scale, seed=seed, rng_shape=(sq, sk))
    return dq, dk, dv


def _packed4(x):
    """(total, H, D) -> the (1, H, total, D) view the kernels address."""
    return x.unsqueeze(0).transpose(1, 2)


def varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, is_causal, scale,
                   seed):
    """Packed sequences: q ``(total_q, H, D)``, k/v ``(total_k, Hkv, D)``. Returns out ``(total_q, H, D)`` and lse
    ``(total_q, H)`` fp32. Causal masking is top-left within each sequence."""
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    total_q, heads, head_dim = q.shape
    out = _outputs.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = _outputs.empty((total_q, heads), dtype=torch.float32, device=q.device)
    batch = cu_seqlens_q.numel() - 1
    if out.numel() == 0 or batch <= 0:
        return out, lse
    if k.shape[0] == 0 or max_seqlen_k == 0:
        return out.zero_(), lse.fill_(float("-inf"))
    q4, k4, v4, out4 = _packed4(q), _packed4(k), _packed4(v), _packed4(out)
    _forward(q4, k4, v4, out4, lse, (0, 1, heads), batch=batch, seqlen_q=max_seqlen_q, seqlen_k=max_seqlen_k,
             cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, dropout_p=dropout_p, is_causal=is_causal,
             scale=scale, seed=seed, rng_shape=(total_q, k.shape[0]))
    return out, lse


def varlen_backward(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                    is_causal, scale, seed):
    """Gradients of :func:`varlen_forward`."""
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    dq = _outputs.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = _outputs.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = _outputs.empty(v.shape, dtype=v.dtype, device=v.device)
    batch = cu_seqlens_q.numel() - 1
    if q.numel() == 0 or k.numel() == 0 or batch <= 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    heads = q.shape[1]
    out4 = _packed4(out.contiguous())
    _backward(grad_out.contiguous(), _packed4(q), _packed4(k), _packed4(v), out4, lse, (0, 1, heads),
              _packed4(dq), _packed4(dk), _packed4(dv), batch=batch, seqlen_q=max_seqlen_q, seqlen_k=max_seqlen_k,
              cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, dropout_p=dropout_p, is_causal=is_causal,
              scale=scale, seed=seed, rng_shape=(q.shape[0], k.shape[0]))
    return dq, dk, dv


def decode_splits(batch, heads, seqlen_q, seqlen_k, head_dim, device) -> int:
    """How many key ranges decoding splits into: enough programs to fill the GPU (two per SM), each range at least
    four key blocks; under the interpreter a few, so the combine path is exercised."""
    block_m, block_n = forward_tiles(head_dim, device)
    key_blocks = triton.cdiv(seqlen_k, block_n)
    if interpreting() or device.type != "cuda":
        return max(1, min(3, key_blocks))
    programs = batch * heads * triton.cdiv(seqlen_q, block_m)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(2 * sms // max(programs, 1), key_blocks // 4, 64))


def decode_forward(q, k_cache, v_cache, cache_seqlens, is_causal, scale):
    """Decoding: q ``(B, H, Sq, D)`` against a cache ``(B, Hkv, Smax, D)`` of which the first ``cache_seqlens[b]``
    keys are valid (all when None); causal alignment is bottom-right (query ``i`` sits at position
    ``cache_seqlens[b] - Sq + i``). The keys are split into ranges whose partial results are merged."""
    q, k_cache, v_cache = _unit_last(q), _unit_last(k_cache), _unit_last(v_cache)
    batch, heads, sq, head_dim = q.shape
    sk = k_cache.shape[2]
    out = _outputs.empty(q.shape, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if sk == 0:
        return out.zero_()
    splits = decode_splits(batch, heads, sq, sk, head_dim, q.device)
    rows = batch * heads * sq
    common = dict(batch=batch, seqlen_q=sq, seqlen_k=sk, cache_seqlens=cache_seqlens, is_causal=is_causal,
                  bottom_right=True, scale=scale, rng_shape=(sq, sk))
    if splits == 1:
        lse = torch.empty((batch, heads, sq), dtype=torch.float32, device=q.device)
        _forward(q, k_cache, v_cache, out, lse, lse.stride(), **common)
        return out
    part = torch.empty((splits, batch, heads, sq, head_dim), dtype=torch.float32, device=q.device)
    part_lse = torch.empty((splits, batch, heads, sq), dtype=torch.float32, device=q.device)
    _forward(q, k_cache, v_cache, part[0], part_lse, part_lse.stride()[1:], splits=splits,
             split_strides=(part.stride(0), part_lse.stride(0)), **common)
    lse = torch.empty((rows,), dtype=torch.float32, device=q.device)
    block_r = 16 if interpreting() else 32
    with on_device(out):
        _combine_kernel[(triton.cdiv(rows, block_r),)](part, part_lse, out, lse, splits, part.stride(0),
                                                        part_lse.stride(0), rows, HEAD_DIM=head_dim,
                                                        BLOCK_D=_block_d(head_dim), BLOCK_R=block_r)
    return out

