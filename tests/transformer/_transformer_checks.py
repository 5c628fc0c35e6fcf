"""Shared checks of the transformer module tests: the tolerance rule applied to whole modules.

A fused module in fp32 is compared with the torch.nn module computing in fp64 (the reference) and holds to
``max|fused - ref| <= 2 * max|nn_fp32 - ref| + atol`` for outputs (3x for gradients): plain PyTorch in the same dtype
is the yardstick, as in testing.md's rule for low precision (the fixed fp32 table is too tight for whole models).
"""

from __future__ import annotations

import copy

import torch

ATOL = 1e-5


def assert_like_torch(out, ref, torch_out, *, gradient=False, name="output"):
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert not torch.isnan(out).any(), f"{name}: NaN"
    error = (out.double() - ref.double()).abs().max().item() if out.numel() else 0.0
    torch_error = (torch_out.double() - ref.double()).abs().max().item() if out.numel() else 0.0
    bound = (3.0 if gradient else 2.0) * torch_error + ATOL
    assert error <= bound, f"{name}: error {error:.3g} > bound {bound:.3g} (plain PyTorch's error {torch_error:.3g})"


def run(module, call, grad_out_seed=0):
    """Runs ``call(module)`` (-> tensor or tuple of tensors), backpropagates fixed random output gradients and returns
    (outputs, {parameter name: grad}, [input grads])."""
    module.zero_grad(set_to_none=True)
    outputs, inputs = call(module)
    outputs = [outputs] if isinstance(outputs, torch.Tensor) else [o for o in outputs if o is not None]
    generator = torch.Generator().manual_seed(grad_out_seed)
    total = sum((o * torch.randn(o.shape, generator=generator, dtype=torch.float64).to(o.dtype)).sum()
                for o in outputs if o.requires_grad)
    if isinstance(total, torch.Tensor):
        total.backward()
    grads = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    return [o.detach() for o in outputs], grads, [i.grad for i in inputs if i.grad is not None]


def check_module(fused, reference, make_call, *, backward=True):
    """``fused`` (fp32) against ``reference`` in fp64 and in fp32. ``make_call(dtype)`` returns a ``call(module)``
    that builds its inputs in ``dtype`` (same values for every dtype) and returns (outputs, input leaves)."""
    ref64 = copy.deepcopy(reference).double()
    ref32 = copy.deepcopy(reference).float()
    fused = fused.float()
    results = {key: run(m, make_call(dtype)) for key, m, dtype in (
        ("fused", fused, torch.float32), ("torch", ref32, torch.float32), ("ref", ref64, torch.float64))}
    (out, grads, in_grads), (t_out, t_grads, t_in_grads), (r_out, r_grads, r_in_grads) = (
        results["fused"], results["torch"], results["ref"])
    assert len(out) == len(r_out)
    for i, (o, t, r) in enumerate(zip(out, t_out, r_out)):
        assert_like_torch(o, r, t, name=f"output {i}")
    if not backward:
        return
    assert grads.keys() == r_grads.keys(), f"gradients of {sorted(grads.keys() ^ r_grads.keys())} differ"
    for name in r_grads:
        assert_like_torch(grads[name], r_grads[name], t_grads[name], gradient=True, name=f"grad of {name}")
    assert len(in_grads) == len(t_in_grads) == len(r_in_grads), "input gradients missing"
    for i, (g, t, r) in enumerate(zip(in_grads, t_in_grads, r_in_grads)):
        assert_like_torch(g, r, t, gradient=True, name=f"grad of input {i}")


def leaf(tensor, dtype):
    """A fresh leaf with ``tensor``'s values (and strides) in ``dtype``; ``tensor`` itself is left untouched."""
    return tensor.detach().to(dtype).requires_grad_(True)
