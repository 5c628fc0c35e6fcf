"""The Triton attention forward (``kernels.triton.attention``'s docstring has the layouts, masks and numerics): the
tile loop and kernel, the launch of dense, packed (varlen) and decoding calls, and the merge of key-split decoding."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _outputs
from ._config import interpreting, on_device
from .attention_common import (
    _KEY, LOG2E, NO_MASK, _block_d, _bounds_and_causal, _keep, _launcher, _mask_args, _packed4,
    _row_blocks, _sequence, _strides, _unit_last, _user_masks, block_map, forward_tiles,
)


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


# Four configurations per kernel keep first-call tuning short (each is compiled); the tiles are fixed above.
def _forward_launcher():
    return _launcher(_forward_kernel, "forward", (2, 3), (4, 8), _KEY + ["SPLIT"])


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
