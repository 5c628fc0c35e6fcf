// Every op schema of the extension, in one place. Kernels are registered per device in csrc/cpu/<op>.cpp
// (TORCH_LIBRARY_IMPL(kernels, CPU, m)) and csrc/cuda/<op>.cu (TORCH_LIBRARY_IMPL(kernels, CUDA, m)); fake (meta)
// implementations and autograd live in Python, in kernels/_ops/<op>_native.py.
#include <torch/extension.h>

TORCH_LIBRARY(kernels, m) {
  // out = x + residual, elementwise, same shape and dtype. The smallest op: it proves the build and the dispatch.
  m.def("residual_add(Tensor x, Tensor residual) -> Tensor");

  // attention (native backend; kernels in csrc/cpu/attention.cpp, csrc/cuda/attention*.cu). q (B, H, Sq, D),
  // k/v (B, Hkv, Sk, D); mask: bool (True = take part) or floating (added), a (B, H, Sq, Sk) broadcast view;
  // key_padding_mask: bool (B, Sk), True = padding; is_causal top-left aligned. Dropout keeps element
  // (b, h, i, j) when Philox(seed, ((b*H + h)*Sq + i)*Sk + j) >= dropout_p (Triton's tl.rand). Returns out and the
  // row log-sum-exp lse (B, H, Sq) (fp32; fp64 for fp64), +inf for rows with no visible key.
  m.def("attention_forward(Tensor q, Tensor k, Tensor v, Tensor? mask, Tensor? key_padding_mask, bool is_causal, "
        "float scale, float dropout_p, int seed) -> (Tensor, Tensor)");
  m.def("attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? mask, "
        "Tensor? key_padding_mask, bool is_causal, float scale, float dropout_p, int seed) -> (Tensor, Tensor, Tensor)");
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
