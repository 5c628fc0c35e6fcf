"""The eager entry of a forward C++ op: ``kernels._C.direct.<op>`` (typed arguments, csrc/autograd/direct_calls.cpp)
outside torch.compile and torch-function modes, the registered op ``torch.ops.kernels.<op>.default`` inside them.

Both reach the same kernels and the same C++ autograd through the dispatcher; the direct entry skips the OpOverload's
parsing of its arguments against the schema (measured, 1 thread, per-thread CPU time: attention_forward 6.1 -> 4.5
us, layer_norm_forward 3.1 -> 1.8, residual_add 1.5 -> 0.7; benchmarks/NOTES.md, issue 13 second pass). Dynamo traces
the OpOverload (it cannot trace a pybind function), and a ``TorchFunctionMode`` sees the op as it would have.
"""

from __future__ import annotations

from typing import Callable

import torch

from .._extension import _C


def forward_op(name: str) -> Callable:
    """The callable for ``kernels::<name>`` (registered with kernels._C), positional arguments as in its schema."""
    overload = getattr(torch.ops.kernels, name).default
    direct = getattr(getattr(_C, "direct", None), name, None)
    if direct is None:  # an older build of kernels._C
        return overload
    is_compiling = torch.compiler.is_compiling
    function_mode_enabled = torch._C._is_torch_function_mode_enabled

    def call(*args):
        if is_compiling() or function_mode_enabled():
            return overload(*args)
        return direct(*args)

    return call
