// The fused masked attention backward op on CUDA (kernels::attention_backward; schema in csrc/ops.cpp): argument
// checks, outputs and the dispatch to the kernels of each dtype and head dim (attention_backward_kernels.cuh,
// instantiated in attention_backward_d<D>_<dtype>.cu).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <kernels/checks.h>
#include <kernels/outputs.h>

#include "attention_arguments.cuh"

namespace kernels {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in, const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& key_padding_mask, bool is_causal, double scale, double dropout_p,
    const std::optional<at::Tensor>& seed) {
  const MaskKind kind = check_attention_arguments(q_in, k_in, v_in, mask, key_padding_mask, dropout_p);
  check_like_q(grad_out_in, "grad_out", q_in);
  check_like_q(out_in, "out", q_in);
  TORCH_CHECK_VALUE(lse_in.scalar_type() == at::kFloat && lse_in.sizes() == q_in.sizes().slice(0, 3),
                    "argument `lse` has dtype ", lse_in.scalar_type(), " and shape ", lse_in.sizes(),
                    "; expected Float and ", q_in.sizes().slice(0, 3));
  check_same_device(lse_in, "lse", q_in, "q");
  const int64_t batch = q_in.size(0), heads = q_in.size(1), sq = q_in.size(2), dim = q_in.size(3);
  const int64_t kv_heads = k_in.size(1), sk = k_in.size(2);

  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = loadable(q_in), k = loadable(k_in), v = loadable(v_in);
  const at::Tensor grad_out = contiguous_aligned(grad_out_in), out = out_in.contiguous(), lse = lse_in.contiguous();
  at::Tensor dq = empty_output({batch, heads, sq, dim}, q.options());
  at::Tensor dk = empty_output({batch, kv_heads, sk, dim}, q.options());
  at::Tensor dv = empty_output({batch, kv_heads, sk, dim}, q.options());
  if (dk.numel() == 0 && dq.numel() == 0) return {dq, dk, dv};
  if (sq == 0) {  // no query: nothing flows back to the keys and values
    dk.zero_();
    dv.zero_();
    return {dq, dk, dv};
  }
  at::Tensor delta = at::empty({batch, heads, sq}, q.options().dtype(at::kFloat));

  Params p = make_params(q, k, v, mask, key_padding_mask, is_causal, scale, dropout_p, seed);
  set_backward_tensors(p, out, lse, grad_out, delta, dq, dk, dv);

  launch_attention_backward(p, kind, q.scalar_type(), dim, c10::cuda::getCurrentCUDAStream());
  return {dq, dk, dv};
}

}  // namespace

void launch_attention_backward(const Params& p, MaskKind mask, at::ScalarType dtype, int64_t head_dim,
                               cudaStream_t stream) {
  check_row_blocks(p.max_sq, "q");
  check_row_blocks(p.max_sk, "k");
  dispatch_head_dim(head_dim, [&](auto d) {
    constexpr int D = decltype(d)::value;
    dtype == at::kHalf ? launch_attention_backward_for<__half, D>(p, mask, stream)
                       : launch_attention_backward_for<__nv_bfloat16, D>(p, mask, stream);
  });
}

TORCH_LIBRARY_IMPL(kernels, CUDA, m) { m.impl("attention_backward", &attention_backward_cuda); }

}  // namespace kernels
