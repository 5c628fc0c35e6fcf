"""``kernels.linear`` (a GEMM with a fused bias and activation) and ``kernels.feed_forward`` (the whole block).

Backends:

* ``"triton"``: one GEMM kernel with epilogues (kernels/triton/linear.py): bias, every activation, the gated
  combination, dropout and the residual add in the forward; the activation and dropout derivative and the bias
  gradient in the epilogue of the gradient GEMM in the backward. The pre-activation is kept, not recomputed.
* ``"native"``: on CUDA, cuBLASLt with its epilogues where they match (csrc/cuda/linear_cublaslt.cu): no activation,
  relu or tanh GELU with the bias in the GEMM (GELU_AUX keeps the pre-activation for the backward), the second
  Linear's residual as cuBLASLt's C operand (beta = 1), and in the backward ``grad @ w2`` with the tanh-GELU
  derivative and the bias gradient (DGELU_BGRAD) and the weight gradient ``grad.T @ x`` with the bias gradient of a
  Linear without activation (BGRADB). Everything else -- erf GELU, SiLU, SwiGLU/GeGLU, dropout, relu when
  training (its pre-activation is kept), odd shapes (a dimension not a multiple of 8, a misaligned pointer) -- and
  the CPU run ``at::addmm``/``at::mm`` (cuBLAS through ATen; the platform BLAS) followed by one fused, vectorised
  epilogue pass of our own (csrc/cuda/linear.cu, csrc/cpu/linear.cpp): the activation (gated: ``act(gate) * up``),
  dropout and the residual add; in the backward one pass after ``grad @ w2`` applies the dropout mask and the
  activation derivative and reduces the bias gradient. ``kernels._C.with_cublaslt`` says whether the build found
  cuBLASLt (without its headers the CUDA build has only the second path).

Gated activations: ``w1`` is ``(2 * ffn, d)``, rows ``[:ffn]`` the gate projection and ``[ffn:]`` the up projection;
the activation output is ``act(gate) * up`` (``swiglu``: SiLU, ``geglu``: erf GELU), and ``b1`` is ``(2 * ffn,)``.
Or ``w1`` is a pair ``(gate, up)`` of ``(ffn, d)`` weights held apart, as Hugging Face's ``gate_proj`` / ``up_proj``
(``b1`` then None or a pair of ``(ffn,)`` biases): no backend concatenates them -- Triton reads the two weights in
one kernel (two accumulators), native writes two GEMMs into the halves of one pre-activation buffer and runs its
epilogue pass (``kernels::linear_epilogue``), and their gradients are computed per weight.

Weights in another layout are passed as views: a GPT-2 ``Conv1D`` weight ``(in, out)`` as ``weight.t()`` (``(out,
in)``, strides ``(1, out)``). Every backend reads it through its strides (Triton's loads; BLAS's transpose flag in
native) and autograd routes its gradient back to the ``(in, out)`` parameter: nothing is copied.

Dropout (``dropout_p > 0``) acts on the activation output ``h`` (M rows = the flattened leading dimensions of ``x``,
``ffn`` columns) with a counter-based RNG: Philox4x32-10 keyed by ``seed``, one counter per element,
``row * ffn + col`` modulo 2**32, uniform ``u`` as Triton's ``tl.rand``; kept where ``u >= dropout_p``, scaled by
``1 / (1 - dropout_p)``. The seed is ``torch.randint(2**31, (1,), device=x.device)``, drawn from torch's generator
once per call (only when ``dropout_p > 0``) and saved for the backward; :func:`dropout_keep_mask` rebuilds the mask
(``from kernels.feed_forward import dropout_keep_mask``: ``kernels.feed_forward`` itself is the function).
"""

from __future__ import annotations

import torch

from . import _backend, _extension, reference
from ._backend import Implementation
from ._extension import has_native_kernel
from ._ops import _fast, _scalars
from ._ops._dropout import draw_seed

_ALL = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_CUDA = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------------------------------------------------
# Dropout keep-mask (the same Philox formula as the kernels), for tests and for users checking a run
# ----------------------------------------------------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF
_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85


def _mul32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of the 64-bit product of the constant ``a`` and the uint32 values in ``b`` (int64),
    in 16-bit halves so that no intermediate leaves int64."""
    b_hi, b_lo = b >> 16, b & 0xFFFF
    lo_product = a * b_lo
    mid = a * b_hi + (lo_product >> 16)  # the product >> 16
    return mid >> 16, ((mid & 0xFFFF) << 16) | (lo_product & 0xFFFF)


def philox_uniform(seed: int, counters: torch.Tensor) -> torch.Tensor:
    """Triton's ``tl.rand(seed, counters)`` for uint32 ``counters`` (held in int64): fp32 uniforms in [0, 1)."""
    c0 = counters & _MASK32
    c1 = torch.zeros_like(c0)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = int(seed) & _MASK32, (int(seed) >> 32) & _MASK32
    for _ in range(10):
        hi_b, lo_b = _mul32(_PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul32(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _PHILOX_KEY_A) & _MASK32, (k1 + _PHILOX_KEY_B) & _MASK32
    # uint32 -> int32 bit pattern -> non-negative int31 -> fp32 in [0, 1), as triton.language.random does.
    signed = torch.where(c0 >= 2**31, c0 - 2**32, c0)
    signed = torch.where(signed < 0, -signed - 1, signed)
    return signed.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)


def dropout_keep_mask(seed, rows: int, cols: int, dropout_p: float, device=None) -> torch.Tensor:
    """The boolean keep-mask ``(rows, cols)`` that the kernels apply to the activation output for ``seed`` (an int or
    the one-element seed tensor) and ``dropout_p``."""
    seed = int(seed.item()) if isinstance(seed, torch.Tensor) else int(seed)
    counters = torch.arange(rows, dtype=torch.int64)[:, None] * cols + torch.arange(cols, dtype=torch.int64)
    uniform = philox_uniform(seed, counters & _MASK32)
    return (uniform >= torch.tensor(dropout_p, dtype=torch.float32)).to(device)


# ----------------------------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------------------------

def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _draw_seed(dropout_p: float, device: torch.device) -> torch.Tensor:
    seed = draw_seed(dropout_p, device)  # the linear ops take a seed tensor even without dropout (not read then)
    return seed if seed is not None else torch.zeros(1, dtype=torch.int64, device=device)


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x if x.dim() == 2 else x.reshape(-1, x.shape[-1])  # a reshape costs ~1 us even when it is a no-op


def _unflatten(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return out if x.dim() == 2 else out.reshape(*x.shape[:-1], out.shape[-1])


def _split(weight, bias):
    """(weight, bias, weight_up, bias_up): a (gate, up) pair taken apart, a single weight as it is."""
    if isinstance(weight, (tuple, list)):
        bias, bias_up = (None, None) if bias is None else bias
        return weight[0], bias, weight[1], bias_up
    return weight, bias, None, None


def _runners(ops):
    """The registry functions of one backend, over its composite ops (kernels/_ops/feed_forward_autograd.py): the
    registered ops when torch.compile traces; in eager mode their autograd as an autograd.Function when a gradient is
    needed, their plain implementations otherwise (no custom-op dispatch)."""

    def run_linear(x, weight, bias=None, *, activation=None):
        weight, bias, weight_up, bias_up = _split(weight, bias)
        needs_grad = _needs_grad(x, weight, bias, weight_up, bias_up)
        if torch.compiler.is_compiling():
            op = ops.linear
        else:
            op = ops.linear_function if needs_grad else ops.linear_eager
        out, _pre = op(_flatten(x), weight, bias, activation, needs_grad, weight_up, bias_up)
        return _unflatten(out, x)

    def run_feed_forward(x, w1, b1, w2, b2, *, activation="gelu", dropout_p=0.0, residual=None):
        w1, b1, w1_up, b1_up = _split(w1, b1)
        seed = _draw_seed(dropout_p, x.device)
        flat_residual = None if residual is None else _flatten(residual)
        save_pre = _needs_grad(x, w1, b1, w2, b2, residual, w1_up, b1_up)
        if torch.compiler.is_compiling():
            op = ops.feed_forward
        else:
            op = ops.feed_forward_function if save_pre else ops.feed_forward_eager
        out, _h, _pre = op(_flatten(x), w1, b1, w2, b2, activation, float(dropout_p), seed, flat_residual, save_pre,
                           w1_up, b1_up)
        return _unflatten(out, x)

    return run_linear, run_feed_forward


def _torch_first_projection(x, weight, bias, activation):
    """The reference's first Linear and activation; a (gate, up) pair as two Linears (no concatenated weight)."""
    weight, bias, weight_up, bias_up = _split(weight, bias)
    if weight_up is None:
        return reference.linear(x, weight, bias, activation=activation)
    gate = torch.nn.functional.linear(x, weight, bias)
    return reference.activate(gate, "silu" if activation == "swiglu" else "gelu") * torch.nn.functional.linear(
        x, weight_up, bias_up)


def _torch_linear(x, weight, bias=None, *, activation=None):
    return _torch_first_projection(x, weight, bias, activation)


def _torch_feed_forward(x, w1, b1, w2, b2, *, activation="gelu", dropout_p=0.0, residual=None):
    if not isinstance(w1, (tuple, list)):
        return reference.feed_forward(x, w1, b1, w2, b2, activation, dropout_p, residual)
    h = torch.nn.functional.dropout(_torch_first_projection(x, w1, b1, activation), dropout_p)
    out = torch.nn.functional.linear(h, w2, b2)
    return out if residual is None else residual + out


def _native_built() -> bool:
    """True when the loaded kernels._C defines this op's C++ primitives (an older build may not)."""
    try:
        torch.ops.kernels.linear_forward  # noqa: B018  (raises when the schema is absent)
        torch.ops.kernels.linear_weight_grad  # noqa: B018
        torch.ops.kernels.linear_epilogue  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return has_native_kernel("linear_forward", "cpu")


def _cublaslt_built() -> bool:
    """True when kernels._C has the cuBLASLt epilogue path (csrc/cuda/linear_cublaslt.cu)."""
    return bool(getattr(_extension._C, "with_cublaslt", False))


def _register() -> None:
    _backend.register(Implementation("linear", "torch", _torch_linear, {"cpu": _ALL, "cuda": _ALL}))
    _backend.register(Implementation("feed_forward", "torch", _torch_feed_forward, {"cpu": _ALL, "cuda": _ALL}))
    if _native_built():
        from ._ops import feed_forward_native

        composite_linear, run_feed_forward = _runners(feed_forward_native.ops)

        def run_native_linear(x, weight, bias=None, *, activation=None):
            # On the CPU a Linear without activation is what F.linear is (at::addmm / at::mm; the same gradients):
            # torch's binding and autograd cost a quarter of the composite op's path (benchmarks/NOTES.md, issue 13).
            # On CUDA the composite op keeps cuBLASLt's epilogues (its bias gradient in the weight-gradient GEMM).
            if activation is None and x.device.type == "cpu":
                return torch.nn.functional.linear(x, weight, bias)
            return composite_linear(x, weight, bias, activation=activation)

        dtypes = {"cpu": (torch.float32, torch.float64, torch.bfloat16), "cuda": _CUDA}
        notes = ""
        if _extension.native_available("cuda"):
            notes = ("cuda: cuBLASLt epilogues for bias, relu, gelu_tanh, residual" if _cublaslt_built()
                     else "cuda: built without cuBLASLt (no cuBLAS headers/library found)")
        _backend.register(Implementation("linear", "native", run_native_linear, dtypes, native_op="linear_forward",
                                         notes=notes))
        _backend.register(Implementation("feed_forward", "native", run_feed_forward, dtypes,
                                         native_op="linear_forward", notes=notes))
    if _backend._triton_importable():
        from ._ops import linear_triton

        run_linear, run_feed_forward = _runners(linear_triton.ops)
        dtypes = {"cpu": (torch.float32, torch.float16), "cuda": _CUDA}
        notes = "cpu only under TRITON_INTERPRET=1"
        _backend.register(Implementation("linear", "triton", run_linear, dtypes, notes=notes))
        _backend.register(Implementation("feed_forward", "triton", run_feed_forward, dtypes, notes=notes))
    # On CUDA the Triton kernel fuses every epilogue into its GEMM; native fuses only those cuBLASLt offers.
    for op in ("linear", "feed_forward"):
        _backend.set_auto_order(op, "cuda", ("triton", "native"))


_register()


# ----------------------------------------------------------------------------------------------------------------------
# Argument checks (the same errors for every backend)
# ----------------------------------------------------------------------------------------------------------------------

def _check_tensor(value, name: str, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"argument `{name}` must be a tensor, got {type(value).__name__}")


def _check_like(t, name: str, x: torch.Tensor) -> None:
    if t is None:
        return
    if t.dtype != x.dtype:
        raise ValueError(f"argument `{name}` has dtype {t.dtype}; expected {x.dtype} (the dtype of `x`)")
    if t.device != x.device:
        raise ValueError(f"argument `{name}` is on {t.device}; expected {x.device} (the device of `x`)")


def _check_activation(activation) -> None:
    if activation is not None and activation not in reference.ACTIVATIONS:
        raise ValueError(f"argument `activation` must be one of {', '.join(reference.ACTIVATIONS)} or None; "
                         f"got {activation!r}")


def _check_pair(weight, bias, activation, w_name: str, b_name: str) -> None:
    """A (gate, up) pair: two tensors of one shape, a gated activation, and ``bias`` None or a pair of tensors."""
    if len(weight) != 2 or not all(isinstance(w, torch.Tensor) for w in weight):
        raise TypeError(f"argument `{w_name}` must be a tensor or a (gate, up) pair of tensors; got "
                        f"{len(weight)} item(s) of types {', '.join(type(w).__name__ for w in weight)}")
    if activation not in reference.GATED_ACTIVATIONS:
        raise ValueError(f"argument `{w_name}` is a (gate, up) pair, which only the gated activations "
                         f"({', '.join(reference.GATED_ACTIVATIONS)}) take; got activation={activation!r}")
    if weight[0].shape != weight[1].shape:
        raise ValueError(f"argument `{w_name}` pairs a gate of shape {tuple(weight[0].shape)} with an up projection "
                         f"of shape {tuple(weight[1].shape)}; expected the same shape")
    if bias is not None and (not isinstance(bias, (tuple, list)) or len(bias) != 2
                             or not all(isinstance(b, torch.Tensor) for b in bias)):
        raise TypeError(f"argument `{b_name}` must be None or a (gate, up) pair of tensors when `{w_name}` is a pair")


def _check_projection(x, weight, bias, activation, w_name: str, b_name: str) -> int:
    """Checks one Linear's weight (nn.Linear layout, or a (gate, up) pair of them) and bias against ``x``; returns
    its output width."""
    if isinstance(weight, (tuple, list)):
        _check_pair(weight, bias, activation, w_name, b_name)
        biases = (None, None) if bias is None else bias
        for part, w, b in zip(("gate", "up"), weight, biases):
            _check_projection(x, w, b, None, f"{w_name}[{part}]", f"{b_name}[{part}]")
        return weight[0].shape[0]
    _check_tensor(weight, w_name)
    _check_tensor(bias, b_name, optional=True)
    if not x.is_floating_point():
        raise ValueError(f"argument `x` has dtype {x.dtype}; expected a floating dtype")
    if x.dim() < 1:
        raise ValueError("argument `x` must have at least 1 dimension (the features), got a scalar")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"argument `{w_name}` has shape {tuple(weight.shape)}; expected (out_features, "
                         f"{x.shape[-1]}) (nn.Linear layout, in_features = the last dimension of `x`)")
    _check_like(weight, w_name, x)
    width = weight.shape[0]
    if activation in reference.GATED_ACTIVATIONS and width % 2 != 0:
        raise ValueError(f"argument `{w_name}` has {width} rows; activation {activation!r} packs [gate; up] and "
                         "needs an even number")
    if bias is not None:
        if bias.shape != (width,):
            raise ValueError(f"argument `{b_name}` has shape {tuple(bias.shape)}; expected ({width},)")
        _check_like(bias, b_name, x)
    return width // 2 if activation in reference.GATED_ACTIVATIONS else width


# ----------------------------------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------------------------------

def linear(x, weight, bias=None, *, activation=None, backend="auto"):
    """``activation(x @ weight.T + bias)`` with ``weight`` in ``nn.Linear`` layout ``(out, in)``.

    ``activation``: None, ``relu``, ``gelu`` (erf, as ``nn.GELU()``), ``gelu_tanh``, ``silu``, or the gated
    ``swiglu``/``geglu`` (``weight`` ``(2 * out, in)`` packs ``[gate; up]``, or ``weight`` is a ``(gate, up)`` pair
    of ``(out, in)`` weights and ``bias`` None or a pair; the result has ``out`` features). ``weight`` may be any
    strided view, e.g. a GPT-2 ``Conv1D`` weight ``(in, out)`` passed as ``weight.t()``.
    """
    if _fast.usable(backend):  # the common call, checked and run in C++ (None: any other call)
        out = _fast.linear(x, weight, bias, activation)
        if out is not None:
            return out
    _check_tensor(x, "x")
    _check_activation(activation)
    _check_projection(x, weight, bias, activation, "weight", "bias")
    implementation = _backend.select("linear", backend, device=x.device, dtype=x.dtype, activation=activation)
    return implementation.fn(x, weight, bias, activation=activation)


def feed_forward(x, w1, b1, w2, b2, *, activation="gelu", dropout_p=0.0, residual=None, backend="auto"):
    """``residual + Linear2(dropout(activation(Linear1(x))))``; gated activations take ``w1`` as ``[gate; up]`` or
    as a ``(gate, up)`` pair.

    ``x`` ``(..., d)``, ``w1`` ``(ffn, d)`` (``(2 * ffn, d)`` for ``swiglu``/``geglu``, or a pair of ``(ffn, d)``
    weights held apart, ``b1`` then None or a pair of ``(ffn,)`` biases), ``b1`` its bias or None,
    ``w2`` ``(d_out, ffn)``, ``b2`` ``(d_out,)`` or None, ``residual`` None or ``(..., d_out)``. Dropout is applied
    to the activation output with probability ``dropout_p`` (pass 0 in evaluation); see the module docstring for its
    counter-based RNG. Weights may be strided views (a GPT-2 ``Conv1D`` weight as ``weight.t()``): nothing is copied.
    """
    if _fast.usable(backend):  # inference's common call, checked and run in C++ (None: any other call)
        out = _fast.feed_forward(x, w1, b1, w2, b2, activation, dropout_p, residual)
        if out is not None:
            return out
    _check_tensor(x, "x")
    _check_tensor(w2, "w2")
    for value, name in ((b2, "b2"), (residual, "residual")):
        _check_tensor(value, name, optional=True)
    _check_activation(activation)
    dropout_p = _scalars.dropout_p(dropout_p)
    ffn = _check_projection(x, w1, b1, activation, "w1", "b1")
    if (activation in reference.GATED_ACTIVATIONS and isinstance(w1, torch.Tensor) and w2.dim() == 2
            and w2.shape[1] == w1.shape[0]):  # w2 reads every row of w1: w1 is ungated, (ffn, d) not (2 * ffn, d)
        raise ValueError(f"argument `w1` has shape {tuple(w1.shape)}; activation {activation!r} packs [gate; up] in "
                         f"w1, which needs (2 * {w2.shape[1]}, {w1.shape[1]}) rows for the {w2.shape[1]} input "
                         "features of `w2` (or pass the (gate, up) weights as a pair)")
    if w2.dim() != 2 or w2.shape[1] != ffn:
        raise ValueError(f"argument `w2` has shape {tuple(w2.shape)}; expected (d_out, {ffn}) (nn.Linear layout, "
                         "in_features = the activation's output width)")
    _check_like(w2, "w2", x)
    d_out = w2.shape[0]
    if b2 is not None:
        if b2.shape != (d_out,):
            raise ValueError(f"argument `b2` has shape {tuple(b2.shape)}; expected ({d_out},)")
        _check_like(b2, "b2", x)
    if residual is not None:
        expected = (*x.shape[:-1], d_out)
        if tuple(residual.shape) != expected:
            raise ValueError(f"argument `residual` has shape {tuple(residual.shape)}; expected {expected} "
                             "(the shape of the output)")
        _check_like(residual, "residual", x)
    implementation = _backend.select("feed_forward", backend, device=x.device, dtype=x.dtype, activation=activation,
                                     dropout_p=dropout_p)
    return implementation.fn(x, w1, b1, w2, b2, activation=activation, dropout_p=dropout_p, residual=residual)
