"""What the Triton attention kernels share (``kernels.triton.attention``'s docstring explains the layouts, the
masks, the online softmax and the dropout draw): the JIT helpers of the tile loops, the tiles and launch
configurations, the block map of the masks, the dropout keep-mask, and the launchers' host helpers."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

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
        bias = tl.load(Mask + rows.to(tl.int64) * smm + cols.to(tl.int64) * smn, mask=inside,
                       other=float("-inf")).to(tl.float32)
        # A -inf hides its key whatever the score is (a NaN or Inf there does not reach the row: README); outside
        # the sequence counts as hidden, as for the bool mask above.
        s = tl.where(bias == float("-inf"), float("-inf"), s + bias * 1.4426950408889634)
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


def _strides(varlen: bool):
    """(batch, head, row) element strides of a 4-D view; varlen views have batch stride 0 (rows come from
    cu_seqlens)."""
    def strides(x):
        return (0 if varlen else x.stride(0)), x.stride(1), x.stride(2)
    return strides


def _packed4(x):
    """(total, H, D) -> the (1, H, total, D) view the kernels address."""
    return x.unsqueeze(0).transpose(1, 2)
