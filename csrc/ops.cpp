// Every op schema of the extension, in one place. Kernels are registered per device in csrc/cpu/<op>.cpp
// (TORCH_LIBRARY_IMPL(kernels, CPU, m)) and csrc/cuda/<op>.cu (TORCH_LIBRARY_IMPL(kernels, CUDA, m)); fake (meta)
// implementations and autograd live in Python, in kernels/_ops/<op>_native.py.
#include <torch/extension.h>

#include <kernels/direct_calls.h>
#include <kernels/fast_calls.h>

#ifdef KERNELS_WITH_CUBLASLT
#include <kernels/linear_cublaslt.h>
#endif

TORCH_LIBRARY(kernels, m) {
  // out = x + residual, elementwise, same shape and dtype. The smallest op: it proves the build and the dispatch.
  m.def("residual_add(Tensor x, Tensor residual) -> Tensor");

  // layer_norm / rms_norm (rms=true) with the fused residual add, on (M, N) rows; weight and bias (N,).
  // Forward returns (y, h = x + residual or empty, mean (M,) or empty for rms, rstd (M,)), statistics in fp32 (fp64
  // for fp64). Backward takes the normalised input h (x or x + residual) and the gradient dh reaching the returned h;
  // returns (dx, which is also the residual's gradient, dweight or empty, dbias or empty).
  m.def("layer_norm_forward(Tensor x, Tensor? residual, Tensor? weight, Tensor? bias, float eps, bool rms) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def("layer_norm_backward(Tensor dy, Tensor? dh, Tensor h, Tensor mean, Tensor rstd, Tensor? weight, "
        "bool has_bias, bool rms) -> (Tensor, Tensor, Tensor)");
  // masked_softmax: y = softmax(scale * x + mask) over the last dim; mask bool (True = keep) or of x's dtype (added),
  // broadcastable to x and read through its strides; is_causal masks j > i over (Sq, Sk), top-left aligned.
  // backward: dx = scale * y * (grad - sum(grad * y)) per row.
  m.def("masked_softmax_forward(Tensor x, Tensor? mask, float scale, bool is_causal) -> Tensor");
  m.def("masked_softmax_backward(Tensor grad, Tensor y, float scale) -> Tensor");
  // feed_forward (kernels.linear, kernels.feed_forward): a GEMM with fused epilogues, 2-D tensors (csrc/cpu/linear.cpp,
  // csrc/cuda/linear.cu; autograd in kernels/_ops/feed_forward_native.py). linear_forward returns
  // (residual + dropout(act(x @ weight.T + bias)), the pre-activation when save_pre else an empty (0, width) tensor);
  // linear_act_backward returns (act'(pre) * dropout(grad @ weight or grad), its column sums in the op-math dtype).
  // `seed` is a one-element int64 tensor (read only when dropout_p > 0).
  m.def("linear_forward(Tensor x, Tensor weight, Tensor? bias, str? activation, float dropout_p, Tensor seed, "
        "Tensor? residual, bool save_pre) -> (Tensor, Tensor)");
  m.def("linear_act_backward(Tensor grad, Tensor? weight, Tensor pre, str? activation, float dropout_p, "
        "Tensor seed) -> (Tensor, Tensor)");
  // linear_epilogue returns residual + dropout(act(pre)) for a pre-activation computed elsewhere (the gated block
  // with separate gate and up weights: two GEMMs into the halves of `pre`, then this one pass).
  m.def("linear_epilogue(Tensor pre, str? activation, float dropout_p, Tensor seed, Tensor? residual) -> Tensor");
  // linear_weight_grad returns (grad.T @ x, the column sums of grad in the op-math dtype when `bias` else an empty
  // (0,) tensor): a Linear's weight and bias gradients in one GEMM where cuBLASLt's BGRADB epilogue serves.
  m.def("linear_weight_grad(Tensor grad, Tensor x, bool bias) -> (Tensor, Tensor)");
  // attention (native backend; kernels in csrc/cpu/attention.cpp, csrc/cuda/attention*.cu). q (B, H, Sq, D),
  // k/v (B, Hkv, Sk, D); mask: bool (True = take part) or floating (added), a (B, H, Sq, Sk) broadcast view;
  // key_padding_mask: bool (B, Sk), True = padding; is_causal top-left aligned. Dropout keeps element
  // (b, h, i, j) when Philox(seed, ((b*H + h)*Sq + i)*Sk + j) >= dropout_p (Triton's tl.rand); `seed` is a one-element
  // int64 tensor on q's device, read by the kernels (no host sync: CUDA-graph safe), None without dropout. Returns out and the
  // row log-sum-exp lse (B, H, Sq) (fp32; fp64 for fp64), +inf for rows with no visible key.
  m.def("attention_forward(Tensor q, Tensor k, Tensor v, Tensor? mask, Tensor? key_padding_mask, bool is_causal, "
        "float scale, float dropout_p, Tensor? seed) -> (Tensor, Tensor)");
  m.def("attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? mask, "
        "Tensor? key_padding_mask, bool is_causal, float scale, float dropout_p, Tensor? seed) -> (Tensor, Tensor, Tensor)");
  // varlen attention (kernels.varlen_attention, native backend): packed sequences, q (Tq, H, D), k/v (Tk, Hkv, D);
  // sequence i spans rows cu_seqlens_q[i]:cu_seqlens_q[i+1] of q and cu_seqlens_k[i]:cu_seqlens_k[i+1] of k/v
  // (int32, (N + 1,)); max_seqlen_q/_k bound the lengths. Causal masking is top-left within each sequence. Dropout
  // keeps (h, i, j) (i, j global row indices) when Philox(seed, (h*Tq + i)*Tk + j) >= dropout_p, the dense formula
  // with B = 1. Returns out (Tq, H, D) contiguous and lse (H, Tq) (fp32; fp64 for fp64), +inf for rows with no key.
  m.def("varlen_attention_forward(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, "
        "int max_seqlen_q, int max_seqlen_k, bool is_causal, float scale, float dropout_p, Tensor? seed) "
        "-> (Tensor, Tensor)");
  m.def("varlen_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
        "Tensor cu_seqlens_q, Tensor cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, bool is_causal, float scale, "
        "float dropout_p, Tensor? seed) -> (Tensor, Tensor, Tensor)");
}

// The Python module kernels._C: importing it loads the library above. `with_cuda` says whether CUDA kernels were
// compiled in, so `import kernels` can warn when a CUDA machine got a CPU-only build; `with_cublaslt` whether the
// cuBLASLt epilogue path of linear/feed_forward was (then `cublaslt_calls()` counts its GEMMs, for tests); `direct`
// holds typed entry points of the forward ops (csrc/include/kernels/direct_calls.h).
PYBIND11_MODULE(_C, module) {
  auto direct = module.def_submodule("direct", "typed entry points of the forward ops, for eager calls");
  kernels::define_direct_calls(direct);
  auto fast = module.def_submodule("fast", "the public functions' common calls in one C++ call, or None");
  kernels::define_fast_calls(fast);
#ifdef KERNELS_WITH_CUDA
  module.attr("with_cuda") = true;
#else
  module.attr("with_cuda") = false;
#endif
#ifdef KERNELS_WITH_CUBLASLT
  module.attr("with_cublaslt") = true;
  module.def("cublaslt_calls", &kernels::cublaslt_calls, "cublasLtMatmul calls made by linear/feed_forward so far");
#else
  module.attr("with_cublaslt") = false;
#endif
}
