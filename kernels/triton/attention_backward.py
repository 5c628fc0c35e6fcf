"""The Triton attention backward (``kernels.triton.attention``'s docstring has the layouts, masks and numerics):
delta = rowsum(dO * O), one program per key block for dK/dV and one per query block for dQ (no atomics:
deterministic), for dense and packed (varlen) calls."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _outputs
from ._config import interpreting, on_device
from .attention_common import (
    _KEY, LOG2E, NO_MASK, _block_d, _bounds_and_causal, _keep, _launcher, _mask_args, _on_edge, _packed4,
    _row_blocks, _sequence, _strides, _unit_last, _user_masks, backward_tiles, block_map,
)


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


def _dkdv_launcher():
    return _launcher(_dkdv_kernel, "dkdv", (1, 2), (4, 8), _KEY)


def _dq_launcher():
    return _launcher(_dq_kernel, "dq", (1, 2), (4, 8), _KEY)


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
