"""The layer-norm tests' shared cases (tests/test_layer_norm*.py): the ops, the public function on one backend, the
reference, and the inputs of one call."""

import functools

import torch

import kernels
from kernels import reference

OPS = ("layer_norm", "rms_norm")
EPS = 1e-5  # explicit for rms_norm: eps=None is the statistics dtype's epsilon, fp32's in T and fp64's in the reference


def norm_fn(op, backend):
    return functools.partial(getattr(kernels, op), backend=backend)


def reference_fn(op):
    return getattr(reference, op)


def norm_inputs(op, shape, n_dims=1, *, dtype=torch.float32, device="cpu", weight=True, bias=True, residual=False,
            scale=1.0, offset=0.0):
    """(args, kwargs) for kernels.<op>, every tensor a leaf that requires grad."""
    normalized = shape[len(shape) - n_dims:]
    x = (torch.randn(shape, dtype=torch.float64) * scale + offset).to(dtype).to(device).requires_grad_()
    w = (torch.rand(normalized, dtype=dtype, device=device) + 0.5).requires_grad_() if weight else None
    b = torch.randn(normalized, dtype=dtype, device=device).requires_grad_() if bias else None
    kwargs = {}
    if residual:
        kwargs["residual"] = torch.randn(shape, dtype=dtype, device=device).requires_grad_()
    if op == "layer_norm":
        return (x, normalized, w, b, EPS), kwargs
    return (x, normalized, w, EPS), kwargs
