// Every op schema of the extension, in one place. Kernels are registered per device in csrc/cpu/<op>.cpp
// (TORCH_LIBRARY_IMPL(kernels, CPU, m)) and csrc/cuda/<op>.cu (TORCH_LIBRARY_IMPL(kernels, CUDA, m)); fake (meta)
// implementations and autograd live in Python, in kernels/_ops/<op>_native.py.
#include <torch/extension.h>

TORCH_LIBRARY(kernels, m) {
  // out = x + residual, elementwise, same shape and dtype. The smallest op: it proves the build and the dispatch.
  m.def("residual_add(Tensor x, Tensor residual) -> Tensor");
}

// The Python module kernels._C: importing it loads the library above. `with_cuda` says whether CUDA kernels were
// compiled in, so `import kernels` can warn when a CUDA machine got a CPU-only build.
PYBIND11_MODULE(_C, module) {
#ifdef KERNELS_WITH_CUDA
  module.attr("with_cuda") = true;
#else
  module.attr("with_cuda") = false;
#endif
}
