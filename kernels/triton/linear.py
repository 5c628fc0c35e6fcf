"""A Triton GEMM with fused epilogues, the building block of ``kernels.linear`` and ``kernels.feed_forward``.

Forward, ``linear_forward``: ``out = residual + dropout(act(x @ w.T + b))`` in one kernel. ``x`` is ``(M, K)``, ``w`` is
``(N, K)`` (``nn.Linear`` layout, any strides: a GPT-2 ``Conv1D`` weight ``(K, N)`` comes as its transposed view) or,
for the gated activations, the gate projection ``(N, K)`` with a separate up projection ``w_up`` ``(N, K)`` (a
packed ``(2N, K)`` ``[gate; up]`` weight is passed as its two row halves, views): the program then keeps two
accumulators (the gate and the up tile of the same output columns) that share the loads of ``x``, and writes
``act(gate) * up``. With ``save_pre`` the pre-activation ``x @ w.T + b`` (``(M, N)`` or ``(M, 2N)``) is written as a
second output, for the backward.

Backward, ``linear_act_backward``: ``grad_pre = d(act)/d(pre) * dropout'(grad @ w)`` with the activation derivative,
the dropout mask and the bias gradient in the epilogue of the gradient GEMM ``grad @ w`` (``grad`` ``(M, K)``, ``w``
``(K, N)``, i.e. the next layer's weight in ``nn.Linear`` layout), or of a plain load of ``grad`` when there is no GEMM
before it (``w`` is None: the standalone ``kernels.linear``). The bias gradient is deterministic: each row block writes
its column sums to a ``(row blocks, width)`` fp32 buffer that is summed afterwards (no atomics).

The pre-activation is KEPT (written in the forward), not recomputed: recomputing it in the backward would cost a
whole extra GEMM ``M x N x K`` (a sixth more FLOPs for the block's forward + backward, which is six such GEMMs), while
keeping it costs one ``(M, N)`` write and its memory, which the eager path also pays (it saves the first Linear's
output for the activation's backward). The activation output ``h`` is kept too, as eager keeps it for the second
Linear's weight gradient.

Dropout: keep-mask ``uniform >= p`` with ``uniform = tl.rand(seed, row * N + col)`` (Philox4x32-10, counters taken
modulo 2**32) over the activation output ``(M, N)``, scaled by ``1 / (1 - p)``; the seed is a one-element int64 tensor
so the same call works under ``torch.compile``. ``from kernels.feed_forward import dropout_keep_mask`` reproduces
the mask.

Numerics: inputs are loaded in their dtype, products accumulate in fp32 (``tl.dot``; TF32 for fp32 inputs only when
torch allows TF32 matmuls), the epilogue runs in fp32 and outputs are written in the input dtype.

Configurations. Autotuned on the GPU, keyed on ``N``, ``K``, the switches and a bucket of ``M`` (the next power of two,
capped at ``M_BUCKET_CAP``: a new token count re-uses its bucket's choice instead of benchmarking every candidate
again), over candidates pruned per call (:func:`_prune`): tensor-core tiles for 16-bit and TF32 inputs, smaller
FMA tiles for fp32 with TF32 off (``input_precision="ieee"``), no tile taller than the bucket, no more shared memory
than sm_90 has. ``KERNELS_TRITON_ONE_CONFIG=1`` replaces autotuning by one known-good configuration; the
interpreter uses one small configuration.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _outputs
from ..reference import GATED_ACTIVATIONS as GATED
from ._config import interpreting, on_device, one_config

# Activation codes shared by the kernels (constexpr) and the launchers; a gated one applies its code to the gate.
ACTIVATION_CODES = {None: 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4, "swiglu": 4, "geglu": 2}


@triton.jit
def _tanh(x):
    # tanh from exp (no libdevice under the interpreter); saturates cleanly to +-1 as exp over/underflows.
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _activate(x, ACTIVATION: tl.constexpr):
    """act(x) in fp32 for the codes of ACTIVATION_CODES."""
    # Constants: sqrt(1/2) (erf GELU), sqrt(2/pi) (tanh GELU), 1/sqrt(2 pi) (the normal pdf).
    if ACTIVATION == 1:
        return tl.maximum(x, 0.0)
    elif ACTIVATION == 2:
        return 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    elif ACTIVATION == 3:
        return 0.5 * x * (1.0 + _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    elif ACTIVATION == 4:
        return x / (1.0 + tl.exp(-x))
    else:
        return x


@triton.jit
def _activate_grad(x, ACTIVATION: tl.constexpr):
    """d act(x) / dx in fp32."""
    if ACTIVATION == 1:
        return tl.where(x > 0.0, 1.0, 0.0)
    elif ACTIVATION == 2:
        cdf = 0.5 * (1.0 + tl.erf(x * 0.7071067811865476))
        pdf = 0.3989422804014327 * tl.exp(-0.5 * x * x)
        return cdf + x * pdf
    elif ACTIVATION == 3:
        inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        t = _tanh(inner)
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x)
    elif ACTIVATION == 4:
        s = 1.0 / (1.0 + tl.exp(-x))
        return s * (1.0 + x * (1.0 - s))
    else:
        return tl.full(x.shape, 1.0, tl.float32)


@triton.jit
def _keep(seed_ptr, rows, cols, N, dropout_p):
    """Dropout keep-mask of a tile: Philox uniform at counter (row * N + col) mod 2**32, kept where >= p."""
    seed = tl.load(seed_ptr)
    counters = (rows[:, None].to(tl.int64) * N + cols[None, :]).to(tl.uint32)
    return tl.rand(seed, counters) >= dropout_p


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    # Grouped ordering: GROUP_M row blocks share each column block's weight tile while it is in L2.
    pid = tl.program_id(0)
    blocks_m = tl.cdiv(M, BLOCK_M)
    blocks_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * blocks_n
    group = pid // per_group
    first_m = group * GROUP_M
    group_size = tl.minimum(blocks_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size
    return pid_m, pid_n


@triton.jit
def _mainloop(a_ptr, b_ptr, b_up_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_uk, stride_un,
              offs_m, offs_n, GATED: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(a @ b)[offs_m, offs_n] in fp32 for a (M, K), b (K, N) given by strides; with GATED also the same tile of a
    second matrix b_up (K, N) (its own strides), sharing the loads of a."""
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :] * stride_ak  # (BLOCK_M, BLOCK_K)
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :].to(tl.int64) * stride_bn  # (BLOCK_K, BLOCK_N)
    u_ptrs = b_up_ptr + offs_k[:, None] * stride_uk + offs_n[None, :].to(tl.int64) * stride_un
    in_m = offs_m[:, None] < M
    in_n = offs_n[None, :] < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=in_m & (offs_k[None, :] < k_left), other=0.0)
        b_mask = (offs_k[:, None] < k_left) & in_n
        b = tl.load(b_ptrs, mask=b_mask, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        if GATED:
            b_up = tl.load(u_ptrs, mask=b_mask, other=0.0)
            acc_up = tl.dot(a, b_up, acc_up, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
        u_ptrs += BLOCK_K * stride_uk
    return acc, acc_up


@triton.jit
def _linear_forward_kernel(
    x_ptr, w_ptr, w_up_ptr, bias_ptr, bias_up_ptr, residual_ptr, out_ptr, pre_ptr, seed_ptr,
    M, N, K, M_BUCKET,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_un, stride_uk, stride_rm, stride_rn, stride_om, stride_on,
    stride_pm, stride_pn,
    dropout_p, dropout_scale,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, GATED: tl.constexpr, DROPOUT: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, SAVE_PRE: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # M_BUCKET (m_bucket(M)) is read by the autotuner's key only.
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # b = w.T: element (k, n) of b is w[n, k].
    acc, acc_up = _mainloop(x_ptr, w_ptr, w_up_ptr, M, N, K, stride_xm, stride_xk, stride_wk, stride_wn, stride_uk,
                            stride_un, offs_m, offs_n, GATED, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    in_n = offs_n < N
    mask = (offs_m[:, None] < M) & in_n[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=in_n, other=0.0).to(tl.float32)[None, :]
        if GATED:
            acc_up += tl.load(bias_up_ptr + offs_n, mask=in_n, other=0.0).to(tl.float32)[None, :]
    rows = offs_m[:, None].to(tl.int64)
    if SAVE_PRE:
        pre_ptrs = pre_ptr + rows * stride_pm + offs_n[None, :] * stride_pn
        tl.store(pre_ptrs, acc.to(pre_ptr.dtype.element_ty), mask=mask)
        if GATED:
            tl.store(pre_ptrs + N * stride_pn, acc_up.to(pre_ptr.dtype.element_ty), mask=mask)
    y = _activate(acc, ACTIVATION)
    if GATED:
        y = y * acc_up
    if DROPOUT:
        y = tl.where(_keep(seed_ptr, offs_m, offs_n, N, dropout_p), y * dropout_scale, 0.0)
    if HAS_RESIDUAL:
        y += tl.load(residual_ptr + rows * stride_rm + offs_n[None, :] * stride_rn, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows * stride_om + offs_n[None, :] * stride_on, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _linear_act_backward_kernel(
    g_ptr, w_ptr, pre_ptr, grad_pre_ptr, bias_partial_ptr, seed_ptr,
    M, N, K, M_BUCKET,
    stride_gm, stride_gk, stride_wk, stride_wn, stride_pm, stride_pn, stride_dm, stride_dn,
    dropout_p, dropout_scale,
    FROM_GEMM: tl.constexpr, ACTIVATION: tl.constexpr, GATED: tl.constexpr, DROPOUT: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # M_BUCKET (m_bucket(M)) is read by the autotuner's key only.
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    in_n = offs_n < N
    mask = (offs_m[:, None] < M) & in_n[None, :]
    rows = offs_m[:, None].to(tl.int64)
    # Gradient with respect to the activation's (dropped-out) output h: (BLOCK_M, BLOCK_N).
    if FROM_GEMM:
        dh, _unused = _mainloop(g_ptr, w_ptr, w_ptr, M, N, K, stride_gm, stride_gk, stride_wk, stride_wn, stride_wk,
                                stride_wn, offs_m, offs_n, False, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    else:
        dh = tl.load(g_ptr + rows * stride_gm + offs_n[None, :] * stride_gk, mask=mask, other=0.0).to(tl.float32)
    if DROPOUT:
        dh = tl.where(_keep(seed_ptr, offs_m, offs_n, N, dropout_p), dh * dropout_scale, 0.0)
    pre_ptrs = pre_ptr + rows * stride_pm + offs_n[None, :] * stride_pn
    pre = tl.load(pre_ptrs, mask=mask, other=0.0).to(tl.float32)
    d_ptrs = grad_pre_ptr + rows * stride_dm + offs_n[None, :] * stride_dn
    partial = bias_partial_ptr + pid_m.to(tl.int64) * (2 * N if GATED else N) + offs_n
    if GATED:
        # h = act(gate) * up: d gate = dh * up * act'(gate), d up = dh * act(gate).
        up = tl.load(pre_ptrs + N * stride_pn, mask=mask, other=0.0).to(tl.float32)
        d_gate = tl.where(mask, dh * up * _activate_grad(pre, ACTIVATION), 0.0)
        d_up = tl.where(mask, dh * _activate(pre, ACTIVATION), 0.0)
        tl.store(d_ptrs, d_gate.to(grad_pre_ptr.dtype.element_ty), mask=mask)
        tl.store(d_ptrs + N * stride_dn, d_up.to(grad_pre_ptr.dtype.element_ty), mask=mask)
        tl.store(partial, tl.sum(d_gate, axis=0), mask=in_n)
        tl.store(partial + N, tl.sum(d_up, axis=0), mask=in_n)
    else:
        d_pre = tl.where(mask, dh * _activate_grad(pre, ACTIVATION), 0.0)
        tl.store(d_ptrs, d_pre.to(grad_pre_ptr.dtype.element_ty), mask=mask)
        tl.store(partial, tl.sum(d_pre, axis=0), mask=in_n)


# ----------------------------------------------------------------------------------------------------------------------
# Configurations
# ----------------------------------------------------------------------------------------------------------------------

def _configs(shapes):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_stages=s, num_warps=w)
            for m, n, k, s, w in shapes]


# Tensor-core candidates (16-bit inputs, fp32 as TF32) for sm_80 (A100: 164 KB smem, 3-4 stages) and sm_90 (H100/H200:
# 227 KB, 4-5 stages, 8 warps for the 128 x 256 tiles). (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps).
TENSOR_CORE_CONFIGS = _configs([
    (128, 256, 64, 3, 8), (256, 128, 64, 3, 8), (128, 256, 64, 4, 8), (128, 128, 64, 4, 4), (128, 128, 64, 5, 8),
    (128, 128, 32, 4, 4), (64, 256, 32, 4, 4), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 64, 5, 4),
])
# fp32 with TF32 off: input_precision="ieee" dots run on the FMA units, one fp32 accumulator element per product, so
# tiles are kept at <= 64 accumulators per thread (BLOCK_M * BLOCK_N / (32 * warps)), which the gated kernels' two
# accumulators double to 128 (no spills), with BLOCK_K = 32 (fp32 operands take twice the shared memory).
FP32_IEEE_CONFIGS = _configs([
    (32, 64, 32, 4, 4), (64, 64, 32, 3, 4), (128, 64, 32, 3, 4), (64, 128, 32, 3, 4), (128, 128, 32, 3, 8),
])
# KERNELS_TRITON_ONE_CONFIG=1: fits every case above (16-bit, TF32, IEEE fp32, gated), compiles once per specialisation.
ONE_CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}
_INTERPRETER_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}
M_BUCKET_CAP = 8192  # from 8192 rows on every candidate has more tiles than sm_90 has SMs: one choice serves them all
SMEM_BYTES = 227 * 1024  # sm_90's shared memory per block (sm_80: 164 KB, where the autotuner skips what fails)
_TUNED: dict = {}


def m_bucket(m: int) -> int:
    """The autotuning key's row count: the next power of two of ``m``, capped at ``M_BUCKET_CAP``."""
    return min(triton.next_power_of_2(max(m, 1)), M_BUCKET_CAP)


def _prune(configs, named_args, **kwargs):
    """The candidates worth compiling for one call (``early_config_prune``): the FMA tiles for fp32 with TF32 off,
    else the tensor-core tiles; for the gated kernels (two fp32 accumulators) tiles up to 128 x 128; tiles at most
    max(64, M bucket) rows tall; operand stages within sm_90's shared memory. Never empty."""
    a = next(arg for arg in named_args.values() if isinstance(arg, torch.Tensor))  # x (forward) or grad (backward)
    ieee_fp32 = a.dtype == torch.float32 and kwargs.get("PRECISION") == "ieee"
    family = {id(c) for c in (FP32_IEEE_CONFIGS if ieee_fp32 else TENSOR_CORE_CONFIGS)}
    tallest = max(64, named_args["M_BUCKET"])

    def fits(c):
        m, n, k = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
        return (m <= tallest and (not kwargs.get("GATED") or m * n <= 128 * 128)
                and c.num_stages * (m + n) * k * a.element_size() <= SMEM_BYTES)

    candidates = [c for c in configs if id(c) in family]
    smallest = min(candidates, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])
    return [c for c in candidates if fits(c)] or [smallest]


def _autotuned(jit_fn, reset_to_zero=None):
    """``jit_fn`` autotuned over both families, keyed on the bucketed M (created once per kernel)."""
    if jit_fn not in _TUNED:
        key = ["M_BUCKET", "N", "K", "PRECISION", "ACTIVATION", "GATED",
               "SAVE_PRE" if jit_fn is _linear_forward_kernel else "FROM_GEMM"]
        _TUNED[jit_fn] = triton.autotune(TENSOR_CORE_CONFIGS + FP32_IEEE_CONFIGS, key=key,
                                         reset_to_zero=reset_to_zero,
                                         prune_configs_by={"early_config_prune": _prune})(jit_fn)
    return _TUNED[jit_fn]


def _kernel(jit_fn, reset_to_zero=None):
    """The kernel to launch and the configuration to pass: the jit function with a fixed configuration under the
    interpreter or with KERNELS_TRITON_ONE_CONFIG=1, else the autotuned function."""
    if interpreting():
        return jit_fn, _INTERPRETER_CONFIG
    if one_config():
        return jit_fn, ONE_CONFIG
    return _autotuned(jit_fn, reset_to_zero), {}


def _grid(M, N):
    return lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and not interpreting() and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _dropout_scale(dropout_p: float) -> float:
    return 1.0 / (1.0 - dropout_p) if dropout_p < 1.0 else 0.0


# ----------------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------------

def linear_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None,
                   dropout_p: float, seed: torch.Tensor, residual: torch.Tensor | None, save_pre: bool,
                   weight_up: torch.Tensor | None = None,
                   bias_up: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, pre)`` for 2-D ``x`` (M, K) and ``weight`` (N or 2N, K); ``pre`` is empty unless ``save_pre``.

    A gated activation takes either ``weight`` ``(2N, K)`` packing ``[gate; up]`` (and ``bias`` ``(2N,)``), or the
    gate projection ``weight`` ``(N, K)`` with the up projection ``weight_up`` ``(N, K)`` (and ``bias_up``); ``pre``
    is ``(M, 2N)`` ``[gate, up]`` either way. ``x``, the weights and ``residual`` are read with their strides (no
    copies).
    """
    gated = activation in GATED
    M, K = x.shape
    if gated and weight_up is None:  # packed [gate; up]: its two row halves are views
        half = weight.shape[0] // 2
        weight, weight_up = weight[:half], weight[half:]
        bias, bias_up = (None, None) if bias is None else (bias[:half], bias[half:])
    N = weight.shape[0]
    width = 2 * N if gated else N
    out = _outputs.empty((M, N), dtype=x.dtype, device=x.device)
    pre = _outputs.empty((M, width) if save_pre else (0, width), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out, pre
    kernel, config = _kernel(_linear_forward_kernel)
    dropout = dropout_p > 0.0
    has_bias = bias is not None
    # The kernel reads the biases with unit stride; placeholders (never read) stand in for absent tensors.
    bias = bias.contiguous() if has_bias else out
    bias_up = bias_up.contiguous() if has_bias and gated else bias
    w_up = weight_up if gated else weight
    res = residual if residual is not None else out
    with on_device(x):
        kernel[_grid(M, N)](
            x, weight, w_up, bias, bias_up, res, out, pre, seed,
            M, N, K, m_bucket(M),
            x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), w_up.stride(0), w_up.stride(1),
            res.stride(0), res.stride(1),
            out.stride(0), out.stride(1), pre.stride(0), pre.stride(1),
            float(dropout_p), _dropout_scale(dropout_p),
            HAS_BIAS=has_bias, ACTIVATION=ACTIVATION_CODES[activation], GATED=gated, DROPOUT=dropout,
            HAS_RESIDUAL=residual is not None, SAVE_PRE=save_pre, PRECISION=_precision(x.dtype), **config,
        )
    return out, pre


def linear_act_backward(grad: torch.Tensor, weight: torch.Tensor | None, pre: torch.Tensor, activation: str | None,
                        dropout_p: float, seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_pre, grad_bias)``: the gradient with respect to the pre-activation ``pre`` (M, N or 2N) and its column
    sums (fp32, the bias gradient), given the gradient of the activation's output, ``grad @ weight`` when ``weight``
    (K, N) is given, else ``grad`` (M, N) itself."""
    gated = activation in GATED
    M, width = pre.shape
    N = width // 2 if gated else width
    grad_pre = _outputs.empty((M, width), dtype=pre.dtype, device=pre.device)
    if M == 0 or N == 0:
        return grad_pre, torch.zeros(width, dtype=torch.float32, device=pre.device)
    kernel, config = _kernel(_linear_act_backward_kernel, reset_to_zero=["bias_partial_ptr"])
    from_gemm = weight is not None
    K = grad.shape[1] if from_gemm else N
    w = weight if from_gemm else grad
    # One row of bias partial sums per row block. The block height is the autotuner's choice, so the buffer has rows
    # for the smallest candidate; rows past the chosen configuration's blocks stay zero (the autotuner zeroes the
    # buffer before each trial and before the final launch).
    smallest = config.get("BLOCK_M") or min(c.kwargs["BLOCK_M"] for c in TENSOR_CORE_CONFIGS + FP32_IEEE_CONFIGS)
    partial = torch.zeros((triton.cdiv(M, smallest), width), dtype=torch.float32, device=pre.device)
    with on_device(pre):
        kernel[_grid(M, N)](
            grad, w, pre, grad_pre, partial, seed,
            M, N, K, m_bucket(M),
            grad.stride(0), grad.stride(1), w.stride(0), w.stride(1), pre.stride(0), pre.stride(1),
            grad_pre.stride(0), grad_pre.stride(1),
            float(dropout_p), _dropout_scale(dropout_p),
            FROM_GEMM=from_gemm, ACTIVATION=ACTIVATION_CODES[activation], GATED=gated, DROPOUT=dropout_p > 0.0,
            PRECISION=_precision(pre.dtype), **config,
        )
    return grad_pre, partial.sum(0)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Plain ``a @ b`` for 2-D ``a`` (M, K) and ``b`` (K, N), any strides: the forward kernel without epilogue."""
    out, _ = linear_forward(a, b.t(), None, None, 0.0, _NO_SEED.get(a.device), None, False)
    return out


class _NoSeed:
    """A placeholder seed tensor per device for launches without dropout (the kernel never reads it)."""

    def __init__(self):
        self._by_device: dict = {}

    def get(self, device: torch.device) -> torch.Tensor:
        if device not in self._by_device:
            self._by_device[device] = torch.zeros(1, dtype=torch.int64, device=device)
        return self._by_device[device]


_NO_SEED = _NoSeed()
