// kernels._C.fast: the common call of a public function (kernels.layer_norm, kernels.rms_norm) in one C++ call.
//
// A public function's Python checks its arguments, picks a backend and reshapes before it reaches the op: ~5 us per
// call against ~2 for torch's own F.layer_norm (1 thread, benchmarks/NOTES.md, issue 13). For the common call -- plain
// tensors of one dtype and device, well-formed arguments, a (device, dtype) that backend "auto" runs natively -- these
// functions do the same checks, reshapes and op call in C++ and return the result; for any other call they return
// None, and the Python path runs with its full checks and error messages. So a fast call never raises an argument
// error of its own: its results are the Python path's, bit for bit (the same op through the dispatcher, with its C++
// autograd).
//
// Which (device, dtype) pairs "auto" runs natively is the Python registry's to say (kernels._backend): it writes
// them here with `serve(op, device_type, dtypes)` whenever an op's backends or auto order change.
#pragma once

#include <torch/extension.h>

namespace kernels {

void define_fast_calls(pybind11::module& module);

}  // namespace kernels
