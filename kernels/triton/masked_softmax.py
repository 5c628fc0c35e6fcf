"""masked_softmax in Triton: ``y = softmax(scale * x + mask)`` over the last dimension, and its backward
``dx = scale * y * (dy - sum(dy * y))``, fp32 arithmetic inside.

Layout: ``x`` is made contiguous and seen as ``rows = D0 * D1 * Sq`` rows of ``Sk`` elements. Row ``r`` is
``(i0, i1, q)`` with ``q = r % Sq``; the mask is never expanded in memory: it is read at
``i0 * s0 + i1 * s1 + q * s_q + j * s_k`` with the strides of its broadcast view (0 on broadcast dimensions), after
the leading dimensions of ``x`` have been coalesced into at most two (``D0``, ``D1``).

Two variants per direction:
* one block per row (``BLOCK >= Sk``), several rows per program for short rows: one read, one write;
* looped, for long rows: an online max/sum pass over chunks of the row, then a pass that writes (two reads).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _outputs
from ._config import interpreting, on_device


@triton.jit
def _scores(x_ptr, mask_ptr, rows_, row_ok, q, mask_row, cols, sk, scale, m_sk,
            HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """(ROWS, BLOCK) tile of ``scale * x + mask`` in fp32, ``-inf`` where masked or outside the row."""
    inside = row_ok[:, None] & (cols[None, :] < sk)
    x = tl.load(x_ptr + rows_[:, None] * sk + cols[None, :], mask=inside, other=0.0).to(tl.float32)
    s = x * scale
    keep = inside
    if HAS_MASK:
        m_ptrs = mask_ptr + mask_row[:, None] + cols[None, :].to(tl.int64) * m_sk
        if MASK_BOOL:
            keep = keep & (tl.load(m_ptrs, mask=inside, other=0) != 0)
        else:  # additive; a -inf hides the position whatever x is (a NaN score there does not count)
            add = tl.load(m_ptrs, mask=inside, other=0.0).to(tl.float32)
            s = s + add
            keep = keep & (add != float("-inf"))
    if IS_CAUSAL:  # top-left aligned: query q sees keys j <= q
        keep = keep & (cols[None, :] <= q[:, None])
    return tl.where(keep, s, float("-inf"))


@triton.jit
def _forward_kernel(x_ptr, mask_ptr, y_ptr, n_rows, sq, sk, d1, scale, m_s0, m_s1, m_sq, m_sk,
                    HAS_MASK: tl.constexpr, MASK_BOOL: tl.constexpr, IS_CAUSAL: tl.constexpr,
                    ROWS: tl.constexpr, BLOCK: tl.constexpr, LOOPED: tl.constexpr):
    rows_ = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    row_ok = rows_ < n_rows
    q = rows_ % sq
    lead = rows_ // sq
    mask_row = (lead // d1) * m_s0 + (lead % d1) * m_s1 + q * m_sq
    cols = tl.arange(0, BLOCK)
    if not LOOPED:
        s = _scores(x_ptr, mask_ptr, rows_, row_ok, q, mask_row, cols, sk, scale, m_sk, HAS_MASK, MASK_BOOL,
                    IS_CAUSAL)
        m = tl.max(s, 1)
        m = tl.where(m == float("-inf"), 0.0, m)  # fully masked row: exp(-inf - 0) = 0 everywhere
        p = tl.exp(s - m[:, None])
        total = tl.sum(p, 1)
        # A fully masked row has p = 0 and total = 0: zeros, not NaN. A NaN or +inf kept score makes total NaN (the max
        # may drop a NaN: max.f32 does on a GPU, but exp(nan - m) is NaN) and `total == 0` is false for it: an all-NaN
        # row, as torch.softmax (`total > 0` kept the unnormalised exps).
        inv = 1.0 / tl.where(total == 0.0, 1.0, total)
        inside = row_ok[:, None] & (cols[None, :] < sk)
        tl.store(y_ptr + rows_[:, None] * sk + cols[None, :], (p * inv[:, None]).to(y_ptr.dtype.element_ty),
                 mask=inside)
    else:
        # Online softmax: running max m and running sum of exp(s - m), rescaled when the max grows.
        m = tl.full((ROWS,), float("-inf"), tl.float32)
        total = tl.zeros((ROWS,), tl.float32)
        for start in range(0, sk, BLOCK):
            s = _scores(x_ptr, mask_ptr, rows_, row_ok, q, mask_row, start + cols, sk, scale, m_sk, HAS_MASK,
                        MASK_BOOL, IS_CAUSAL)
            m_new = tl.maximum(m, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            total = total * tl.exp(m - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), 1)
            m = m_new
        m = tl.where(m == float("-inf"), 0.0, m)
        inv = 1.0 / tl.where(total == 0.0, 1.0, total)  # as above: zeros for a fully masked row, NaN kept
        for start in range(0, sk, BLOCK):
            s = _scores(x_ptr, mask_ptr, rows_, row_ok, q, mask_row, start + cols, sk, scale, m_sk, HAS_MASK,
                        MASK_BOOL, IS_CAUSAL)
            inside = row_ok[:, None] & (start + cols[None, :] < sk)
            p = tl.exp(s - m[:, None]) * inv[:, None]
            tl.store(y_ptr + rows_[:, None] * sk + start + cols[None, :], p.to(y_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _backward_kernel(dy_ptr, y_ptr, dx_ptr, n_rows, sk, scale,
                     ROWS: tl.constexpr, BLOCK: tl.constexpr, LOOPED: tl.constexpr):
    rows_ = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows_ < n_rows
    cols = tl.arange(0, BLOCK)
    base = rows_[:, None] * sk
    if not LOOPED:
        inside = row_ok[:, None] & (cols[None, :] < sk)
        y = tl.load(y_ptr + base + cols[None, :], mask=inside, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + base + cols[None, :], mask=inside, other=0.0).to(tl.float32)
        dot = tl.sum(y * dy, 1)
        dx = scale * y * (dy - dot[:, None])
        tl.store(dx_ptr + base + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=inside)
    else:
        dot = tl.zeros((ROWS,), tl.float32)
        for start in range(0, sk, BLOCK):
            inside = row_ok[:, None] & (start + cols[None, :] < sk)
            y = tl.load(y_ptr + base + start + cols[None, :], mask=inside, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + base + start + cols[None, :], mask=inside, other=0.0).to(tl.float32)
            dot += tl.sum(y * dy, 1)
        for start in range(0, sk, BLOCK):
            inside = row_ok[:, None] & (start + cols[None, :] < sk)
            y = tl.load(y_ptr + base + start + cols[None, :], mask=inside, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + base + start + cols[None, :], mask=inside, other=0.0).to(tl.float32)
            dx = scale * y * (dy - dot[:, None])
            tl.store(dx_ptr + base + start + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=inside)


# ----------------------------------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------------------------------

# Longest row held in one block (fp32 registers: 16 per thread at 32 warps); longer rows take the looped variant.
MAX_SINGLE_BLOCK = 512 if interpreting() else 16384
LOOP_BLOCK = 256 if interpreting() else 4096
# Elements per program that short rows are packed to (several rows per program).
TILE = 2048 if interpreting() else 4096


def _config(sk: int) -> tuple[int, int, bool, int]:
    """(ROWS, BLOCK, LOOPED, num_warps) for rows of ``sk`` elements."""
    block = triton.next_power_of_2(max(sk, 1))
    looped = block > MAX_SINGLE_BLOCK
    if looped:
        block = LOOP_BLOCK
    rows = max(1, TILE // block)
    # About 8-16 fp32 elements per thread.
    warps = min(32, max(1, rows * block // 512))
    return rows, block, looped, warps


def mask_layout(mask: torch.Tensor, shape: torch.Size):
    """The broadcast view of ``mask`` over ``shape`` as ``(d0, d1, (s0, s1, s_q, s_k))``: the leading dimensions of
    ``shape`` coalesced into two, with the mask's strides (0 where broadcast). None when they do not coalesce into two
    (the mask's strides over the leading dimensions follow no two-level pattern)."""
    view = mask.expand(shape)  # a view: broadcast dimensions get stride 0, nothing is copied
    strides = view.stride()
    if len(shape) == 1:
        return 1, 1, (0, 0, 0, strides[-1])
    lead = [(size, stride) for size, stride in zip(shape[:-2], strides[:-2]) if size != 1]
    merged: list[list[int]] = []
    for size, stride in lead:
        if merged and merged[-1][1] == stride * size:  # the outer dim steps over whole inner ones: one dim
            merged[-1] = [merged[-1][0] * size, stride]
        else:
            merged.append([size, stride])
    if len(merged) > 2:
        return None
    while len(merged) < 2:
        merged.insert(0, [1, 0])
    (d0, s0), (d1, s1) = merged
    return d0, d1, (s0, s1, strides[-2], strides[-1])


def forward(x: torch.Tensor, mask: torch.Tensor | None, scale: float, is_causal: bool) -> torch.Tensor:
    """Launcher: ``x`` (any shape, copied when not contiguous), ``mask`` broadcastable to it (read in place), a new
    contiguous output of ``x``'s shape and dtype."""
    x = x.contiguous()
    y = _outputs.empty_like(x)
    if x.numel() == 0:
        return y
    sk = x.shape[-1]
    sq = x.shape[-2] if x.dim() >= 2 else 1
    n_rows = x.numel() // sk
    if mask is None:
        mask_arg, d1, strides = x, 1, (0, 0, 0, 0)
    else:
        layout = mask_layout(mask, x.shape)
        if layout is None:
            raise ValueError(f"argument `mask` of shape {tuple(mask.shape)} with strides {mask.stride()} cannot be "
                             f"read in place by the Triton kernel over `x` of shape {tuple(x.shape)}")
        _, d1, strides = layout
        # bool is read as bytes (same size, same strides)
        mask_arg = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
    rows, block, looped, warps = _config(sk)
    with on_device(x):
        _forward_kernel[(triton.cdiv(n_rows, rows),)](
            x, mask_arg, y, n_rows, sq, sk, d1, float(scale), *strides,
            HAS_MASK=mask is not None, MASK_BOOL=mask is not None and mask.dtype == torch.bool,
            IS_CAUSAL=bool(is_causal), ROWS=rows, BLOCK=block, LOOPED=looped, num_warps=warps)
    return y


def backward(grad: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    """Launcher: ``dx = scale * y * (grad - sum(grad * y))`` per row, a new contiguous tensor of ``y``'s dtype."""
    grad, y = grad.contiguous(), y.contiguous()
    dx = _outputs.empty_like(y)
    if y.numel() == 0:
        return dx
    sk = y.shape[-1]
    n_rows = y.numel() // sk
    rows, block, looped, warps = _config(sk)
    with on_device(y):
        _backward_kernel[(triton.cdiv(n_rows, rows),)](
            grad, y, dx, n_rows, sk, float(scale), ROWS=rows, BLOCK=block, LOOPED=looped, num_warps=warps)
    return dx
