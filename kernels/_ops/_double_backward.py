"""Second (and higher) derivatives: autograd for the backward ops.

Each op's first derivative is a backward op (``kernels::layer_norm_backward``, ``masked_softmax_backward``,
``attention_backward``, ...). :func:`register` gives such an op an autograd formula that recomputes the first
derivative with differentiable torch ops (``first_derivative``: the same outputs from the same inputs, typically
through ``kernels.reference`` and ``torch.autograd.grad(create_graph=True)``) and differentiates that. The C++ autograd
of the forward ops (csrc/autograd/) calls the backward op through the dispatcher when grad mode is on, i.e. under
``backward(create_graph=True)``, so the second derivative is recorded; the usual backward skips this layer
(:func:`call_backward` does the same for the Python-registered Triton ops).

The recomputation runs on detached copies of the saved tensors (a graph of its own, which never touches the outer
one), so it serves second derivatives; a third one (``create_graph=True`` on the second backward) raises an error
naming the op rather than returning a derivative with a missing graph.
"""

from __future__ import annotations

from typing import Callable

import torch


def call_backward(backward_op, *args):
    """``backward_op(*args)`` from a forward op's backward: through its autograd only when grad mode is on
    (``create_graph=True``), else straight to the kernel (no Python autograd wrapper on the usual backward)."""
    if torch.is_grad_enabled():
        return backward_op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return backward_op(*args)


def register(backward_op, first_derivative: Callable, public_name: str) -> None:
    """Autograd of ``backward_op`` (a qualified name or a custom op) through ``first_derivative(*inputs)``, which
    returns the op's outputs (a tuple, or one tensor) computed with differentiable torch ops; outputs that are empty
    placeholders may be returned as None. ``public_name`` (e.g. ``"kernels.layer_norm"``) names the op in errors."""

    def setup_context(ctx, inputs, output):
        ctx.positions = tuple(i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor))
        ctx.save_for_backward(*(inputs[i] for i in ctx.positions))
        ctx.others = tuple(None if isinstance(a, torch.Tensor) else a for a in inputs)

    def backward(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(f"{public_name}: third and higher derivatives are not supported (the second derivative "
                               "is: call the second backward without create_graph=True)")
        inputs = list(ctx.others)
        for i, saved in zip(ctx.positions, ctx.saved_tensors):
            inputs[i] = saved
        wanted = [i for i in ctx.positions if ctx.needs_input_grad[i]]
        result = [None] * len(inputs)
        if not wanted:
            return tuple(result)
        with torch.enable_grad():
            # Every floating input becomes a leaf that requires grad, so the recomputation can differentiate through
            # the ones not asked for too (e.g. dq needs q even when only k's second derivative is wanted).
            args = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                    for a in inputs]
            outputs = first_derivative(*args)
            outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
            pairs = [(o, g) for o, g in zip(outputs, grads) if o is not None and o.requires_grad and g is not None]
            if pairs:
                derivatives = torch.autograd.grad([o for o, _ in pairs], [args[i] for i in wanted],
                                                  [g for _, g in pairs], allow_unused=True)
                for i, d in zip(wanted, derivatives):
                    result[i] = d
        return tuple(result)

    torch.library.register_autograd(backward_op, backward, setup_context=setup_context)
