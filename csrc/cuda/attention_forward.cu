// The fused masked attention forward op on CUDA (kernels::attention_forward; schema in csrc/ops.cpp): argument
// checks, outputs and the dispatch to the kernels of each dtype and head dim (attention_forward_kernel.cuh,
// instantiated in attention_forward_d<D>.cu). Only c10's CUDA headers are used (see csrc/cuda/residual_add.cu).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <kernels/outputs.h>

#include "attention_arguments.cuh"

namespace kernels {
namespace {

std::tuple<at::Tensor, at::Tensor> attention_forward_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                          const at::Tensor& v_in, const std::optional<at::Tensor>& mask,
                                                          const std::optional<at::Tensor>& key_padding_mask,
                                                          bool is_causal, double scale, double dropout_p,
                                                          const std::optional<at::Tensor>& seed) {
  const MaskKind kind = check_attention_arguments(q_in, k_in, v_in, mask, key_padding_mask, dropout_p);
  const int64_t batch = q_in.size(0), heads = q_in.size(1), sq = q_in.size(2), dim = q_in.size(3);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = loadable(q_in), k = loadable(k_in), v = loadable(v_in);
  at::Tensor out = empty_output({batch, heads, sq, dim}, q.options());
  at::Tensor lse = empty_output({batch, heads, sq}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};

  Params p = make_params(q, k, v, mask, key_padding_mask, is_causal, scale, dropout_p, seed);
  p.out = out.mutable_data_ptr();
  p.lse = lse.mutable_data_ptr<float>();

  launch_attention_forward(p, kind, q.scalar_type(), dim, c10::cuda::getCurrentCUDAStream());
  return {out, lse};
}

}  // namespace

void launch_attention_forward(const Params& p, MaskKind mask, at::ScalarType dtype, int64_t head_dim,
                              cudaStream_t stream) {
  dispatch_head_dim(head_dim, [&](auto d) {
    constexpr int D = decltype(d)::value;
    check_row_blocks(p.max_sq, "q", AttentionTiles<D>::kForwardRows);
    dtype == at::kHalf ? launch_attention_forward_for<__half, D>(p, mask, stream)
                       : launch_attention_forward_for<__nv_bfloat16, D>(p, mask, stream);
  });
}

TORCH_LIBRARY_IMPL(kernels, CUDA, m) { m.impl("attention_forward", &attention_forward_cuda); }

}  // namespace kernels
