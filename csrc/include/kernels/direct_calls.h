// Direct Python entry points of the forward ops (kernels._C.direct.<op>), for the eager fast path of the Python layer.
//
// A call through torch.ops.kernels.<op>.default parses its arguments against the schema into a boxed IValue stack
// (~3-4 us for attention_forward's nine arguments, measured: benchmarks/NOTES.md, issue 13). These functions take
// typed arguments through pybind11 and call the same op through the dispatcher's typed handle: the same kernels, the
// same autograd (csrc/autograd/), the same dispatch keys (a __torch_dispatch__ mode or subclass still sees the op),
// only the argument parsing is cheaper. torch.compile cannot trace them: the Python layer calls the OpOverload while
// compiling.
#pragma once

#include <torch/extension.h>

namespace kernels {

void define_direct_calls(pybind11::module& module);

}  // namespace kernels
