"""The tolerance rule of testing.md, used by every op test (and available to users who check their own kernels).

A result in dtype T passes against a reference computed on upcast inputs (fp64 on the CPU, fp32 on a GPU) when

* T is fp16 or bf16:  ``max|out - ref| <= k * max|out_torch_T - ref| + ATOL[T]``, with ``k = 2`` for outputs and
  ``k = 3`` for gradients, where ``out_torch_T`` is plain PyTorch computing the same thing in T;
* T is fp32 or fp64:  ``|out - ref| <= atol + rtol * |ref|`` elementwise, with the fixed table ``FIXED[T]``.

NaN never passes, nor an infinity where the reference is finite, nor a shape or dtype that differs.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

# Absolute slack for the low-precision rule: about one unit in the last place at magnitude 1.
ATOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3}
# (atol, rtol) for full precision; fp32 is torch.testing's default table.
FIXED = {torch.float32: (1e-5, 1.3e-6), torch.float64: (1e-10, 1e-10)}
OUTPUT_FACTOR = 2.0
GRADIENT_FACTOR = 3.0


def reference_dtype(device: torch.device) -> torch.dtype:
    """The dtype references are computed in: fp64 on the CPU, fp32 on a GPU."""
    return torch.float64 if torch.device(device).type == "cpu" else torch.float32


def assert_close(out: torch.Tensor, ref: torch.Tensor, *, torch_out: torch.Tensor | None = None,
                 gradient: bool = False, name: str = "output", atol: float | None = None,
                 rtol: float | None = None) -> None:
    """Raises AssertionError unless ``out`` passes the tolerance rule against ``ref``.

    ``torch_out`` (plain PyTorch in ``out.dtype``) is required for fp16/bf16. ``atol``/``rtol`` override the fixed
    table for fp32/fp64 (for a documented reason, e.g. TF32 on a GPU); for fp16/bf16 ``atol`` overrides ``ATOL``.
    """
    if not isinstance(out, torch.Tensor):
        raise AssertionError(f"{name}: expected a tensor, got {type(out).__name__}")
    if out.shape != ref.shape:
        raise AssertionError(f"{name}: shape {tuple(out.shape)} != reference shape {tuple(ref.shape)}")
    if out.numel() == 0:
        return
    diff = (out.double() - ref.double()).abs()
    nan = torch.isnan(out)
    if nan.any():
        raise AssertionError(f"{name}: {int(nan.sum())} NaN element(s) of {out.numel()}, first at "
                             f"{_index(nan, out.shape)}")
    bad_inf = torch.isinf(out) & ~torch.isinf(ref.to(out.device))
    if bad_inf.any():
        raise AssertionError(f"{name}: {int(bad_inf.sum())} infinite element(s) where the reference is finite")
    same_inf = torch.isinf(out) & (out.double() == ref.double())
    diff = diff.masked_fill(same_inf, 0.0)
    dtype = out.dtype
    if dtype in FIXED:
        fixed_atol, fixed_rtol = FIXED[dtype]
        atol = fixed_atol if atol is None else atol
        rtol = fixed_rtol if rtol is None else rtol
        allowed = atol + rtol * ref.double().abs()
        excess = diff - allowed
        if (excess > 0).any():
            worst = int(excess.flatten().argmax())
            raise AssertionError(
                f"{name} ({_dtype(dtype)}): {int((excess > 0).sum())} of {out.numel()} elements outside "
                f"atol={atol:g}, rtol={rtol:g}; worst at {_unravel(worst, out.shape)}: got "
                f"{out.flatten()[worst].item():.8g}, reference {ref.flatten()[worst].item():.8g}")
        return
    if dtype not in ATOL:
        raise AssertionError(f"{name}: no tolerance rule for dtype {_dtype(dtype)}")
    if torch_out is None:
        raise AssertionError(f"{name}: the {_dtype(dtype)} rule needs `torch_out`, plain PyTorch in {_dtype(dtype)}")
    if torch_out.shape != ref.shape:
        raise AssertionError(f"{name}: torch_out shape {tuple(torch_out.shape)} != reference {tuple(ref.shape)}")
    factor = GRADIENT_FACTOR if gradient else OUTPUT_FACTOR
    slack = ATOL[dtype] if atol is None else atol
    torch_error = (torch_out.double() - ref.double()).abs().nan_to_num(nan=0.0, posinf=0.0).max().item()
    bound = factor * torch_error + slack
    error = diff.max().item()
    if not error <= bound:
        worst = int(diff.flatten().argmax())
        raise AssertionError(
            f"{name} ({_dtype(dtype)}): max error {error:.4g} > {factor:g} * {torch_error:.4g} (plain PyTorch's "
            f"error) + {slack:g}; worst at {_unravel(worst, out.shape)}: got {out.flatten()[worst].item():.6g}, "
            f"reference {ref.flatten()[worst].item():.6g}")


def check_against_reference(fn: Callable[..., Any], reference_fn: Callable[..., Any], *args, backward: bool = True,
                            atol: float | None = None, rtol: float | None = None,
                            grad_atol: float | None = None, grad_rtol: float | None = None, **kwargs) -> Any:
    """Runs ``fn`` and ``reference_fn`` on the same inputs and applies the tolerance rule to every output and, with
    ``backward``, to the gradient of every input tensor that has ``requires_grad``.

    ``reference_fn`` runs twice: on the inputs as given (plain PyTorch in T) and on floating inputs upcast to
    :func:`reference_dtype`. Inputs keep their strides for ``fn``, so non-contiguous cases stay non-contiguous.
    The output gradients are random (never zeros) and shared by the three runs. Returns ``fn``'s output.
    """
    device = _first_tensor(args, kwargs).device
    high = reference_dtype(device)
    run_args, run_kwargs, run_leaves = _leaves(args, kwargs, None)
    torch_args, torch_kwargs, torch_leaves = _leaves(args, kwargs, None)
    ref_args, ref_kwargs, ref_leaves = _leaves(args, kwargs, high)

    out = fn(*run_args, **run_kwargs)
    torch_out = reference_fn(*torch_args, **torch_kwargs)
    ref = reference_fn(*ref_args, **ref_kwargs)
    outs, torch_outs, refs = _flat(out), _flat(torch_out), _flat(ref)
    if len(outs) != len(refs):
        raise AssertionError(f"fn returned {len(outs)} tensor(s), the reference {len(refs)}")
    for i, (o, t, r) in enumerate(zip(outs, torch_outs, refs)):
        if o.dtype != t.dtype:
            raise AssertionError(f"output[{i}]: dtype {_dtype(o.dtype)} != plain PyTorch's {_dtype(t.dtype)}")
        assert_close(o, r, torch_out=t, name=f"output[{i}]", atol=atol, rtol=rtol)
    if not backward or not run_leaves:
        return out
    grads = [torch.randn_like(r, dtype=high) for r in refs]
    for i, (leaf_o, leaf_t, leaf_r) in enumerate(zip(_grads(outs, run_leaves, grads),
                                                     _grads(torch_outs, torch_leaves, grads),
                                                     _grads(refs, ref_leaves, grads))):
        assert_close(leaf_o, leaf_r, torch_out=leaf_t, gradient=True, name=f"gradient of input {i}",
                     atol=grad_atol, rtol=grad_rtol)
    return out


def _leaves(args, kwargs, dtype):
    """Detached copies of the tensor inputs (same storage and strides), upcast to ``dtype`` when given; the ones whose
    original requires grad become leaves that require grad."""
    leaves = []

    def convert(value):
        if not isinstance(value, torch.Tensor):
            return value
        tensor = value.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        if value.requires_grad:
            tensor.requires_grad_(True)
            leaves.append(tensor)
        return tensor

    return [convert(a) for a in args], {k: convert(v) for k, v in kwargs.items()}, leaves


def _grads(outs, leaves, grads):
    pairs = [(o, g.to(o.dtype)) for o, g in zip(outs, grads) if o.requires_grad]
    computed = torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True)
    return [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, computed)]


def _flat(value):
    if isinstance(value, torch.Tensor):
        return [value]
    return [v for v in value if isinstance(v, torch.Tensor)]


def _first_tensor(args, kwargs):
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    raise ValueError("check_against_reference needs at least one tensor input")


def _dtype(dtype):
    return str(dtype).replace("torch.", "")


def _unravel(flat_index, shape):
    index = []
    for size in reversed(shape):
        index.append(flat_index % size)
        flat_index //= size
    return tuple(reversed(index))


def _index(mask, shape):
    return _unravel(int(mask.flatten().nonzero()[0]), shape)


def available_devices() -> list[str]:
    """The devices tests run on: "cpu" always, "cuda" when a GPU is present."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def backends_for(op: str, device: str) -> list[str]:
    """The non-reference backends of ``op`` usable on ``device`` here (triton on cpu only under the interpreter)."""
    from ._backend import implementations

    return [name for name, impl in implementations(op).items()
            if name != "torch" and impl.unavailable(torch.device(device).type) is None]
