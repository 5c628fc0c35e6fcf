// Fused CPU attention: the dense entry points (attention_forward / attention_backward on (B, H, S, D) tensors),
// their argument checks, and the helpers the varlen entry points share. The kernels: attention_forward.cpp,
// attention_backward.cpp; layouts and masks: attention_common.h.
#include <torch/library.h>

#include <array>

#include <kernels/checks.h>
#include <kernels/outputs.h>
#include <kernels/philox.h>

#include "attention_common.h"

namespace kernels {
namespace cpu_attention {

// The sizes and options every call shares; q, k (B', H, S', D) views.
Problem make_common(const at::Tensor& q, const at::Tensor& k, bool is_causal, double scale, double dropout_p,
                    const std::optional<at::Tensor>& seed) {
  Problem p;
  p.heads = q.size(1);
  p.sq_total = q.size(2);
  p.dim = q.size(3);
  p.kv_heads = k.size(1);
  p.sk_total = k.size(2);
  TORCH_CHECK_VALUE(k.size(3) == p.dim, "argument `k` has head dim ", k.size(3), "; expected ", p.dim,
                    " (the head dim of `q`)");
  TORCH_CHECK_VALUE(p.kv_heads > 0 ? p.heads % p.kv_heads == 0 : p.heads == 0, "argument `k` has ", p.kv_heads,
                    " heads, which does not divide the ", p.heads, " heads of `q`");
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, "argument `dropout_p` must be in [0, 1); got ", dropout_p);
  p.dim_padded = round_up(p.dim, q.scalar_type() == at::kDouble ? panel<double>() : panel<float>());
  p.scale = scale;
  p.dropout_p = dropout_p;
  check_dropout_seed(seed, dropout_p, q, "q");
  p.seed = dropout_p > 0.0 ? static_cast<uint64_t>(seed->item<int64_t>()) : 0;
  p.causal = is_causal;
  return p;
}

// Adds a sequence; its keys take whole blocks in the packed K/V buffers.
void add_sequence(Problem& p, const Sequence& seq) {
  p.seqs.push_back(seq);
  p.key_base.push_back(p.key_base.back() + round_up(seq.k_len, kBlockK));
  p.max_q = std::max(p.max_q, seq.q_len);
}

at::ScalarType lse_type(const at::Tensor& q) { return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// Checks of the tensors the backward adds: grad_out and out like q, lse (leading dims of q) in the lse dtype.
void check_backward_inputs(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& out,
                           const at::Tensor& lse, at::IntArrayRef lse_shape) {
  check_like_q(grad_out, "grad_out", q);
  check_like_q(out, "out", q);
  TORCH_CHECK_VALUE(lse.scalar_type() == lse_type(q) && lse.sizes() == lse_shape, "argument `lse` has dtype ",
                    lse.scalar_type(), " and shape ", lse.sizes(), "; expected ", lse_type(q), " and ", lse_shape);
}

}  // namespace cpu_attention

namespace {

using namespace cpu_attention;

// A dense call: checks every argument (messages name it); one sequence per batch entry.
Problem make_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& key_padding_mask,
                     bool is_causal, double scale, double dropout_p, const std::optional<at::Tensor>& seed) {
  check_attention_qkv(q, k, v, 4, {at::kFloat, at::kDouble, at::kBFloat16});
  const int64_t batch = q.size(0), sq = q.size(2), sk = k.size(2);
  TORCH_CHECK_VALUE(k.size(0) == batch, "argument `k` has batch ", k.size(0), "; expected ", batch,
                    " (the batch of `q`)");
  Problem p = make_common(q, k, is_causal, scale, dropout_p, seed);
  if (mask.has_value()) {
    check_dim(*mask, "mask", 4);
    check_same_device(*mask, "mask", q, "q");
    check_dtype(*mask, "mask", {at::kBool, at::kFloat, at::kDouble, at::kBFloat16, at::kHalf});
    const std::array<int64_t, 4> expected{batch, p.heads, sq, sk};
    TORCH_CHECK_VALUE(mask->sizes() == at::IntArrayRef(expected), "argument `mask` has shape ", mask->sizes(),
                      "; expected ", at::IntArrayRef(expected), " (a broadcast view; stride 0 where broadcast)");
  }
  check_key_padding_mask(key_padding_mask, q, batch, sk);
  p.mask = mask;
  p.padding = key_padding_mask;
  p.key_base.push_back(0);
  for (int64_t b = 0; b < batch; ++b) add_sequence(p, Sequence{b, 0, sq, 0, sk});
  return p;
}

std::tuple<at::Tensor, at::Tensor> attention_forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                         const std::optional<at::Tensor>& mask,
                                                         const std::optional<at::Tensor>& key_padding_mask,
                                                         bool is_causal, double scale, double dropout_p,
                                                         const std::optional<at::Tensor>& seed) {
  Problem p = make_problem(q, k, v, mask, key_padding_mask, is_causal, scale, dropout_p, seed);
  at::Tensor out = empty_output({q.size(0), p.heads, p.sq_total, p.dim}, q.options());
  at::Tensor lse = empty_output({q.size(0), p.heads, p.sq_total}, q.options().dtype(lse_type(q)));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "attention_forward_cpu",
                                 [&] { forward_kernel<scalar_t>(p, q, k, v, out, lse); });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& key_padding_mask,
    bool is_causal, double scale, double dropout_p, const std::optional<at::Tensor>& seed) {
  Problem p = make_problem(q, k, v, mask, key_padding_mask, is_causal, scale, dropout_p, seed);
  check_backward_inputs(grad_out, q, out, lse, q.sizes().slice(0, 3));
  at::Tensor dq = empty_output(q.sizes(), q.options());
  at::Tensor dk = empty_output(k.sizes(), q.options());
  at::Tensor dv = empty_output(k.sizes(), q.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "attention_backward_cpu",
                                 [&] { backward_kernel<scalar_t>(p, grad_out, q, k, v, out, lse, dq, dk, dv); });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(kernels, CPU, m) {
  m.impl("attention_forward", &attention_forward_cpu);
  m.impl("attention_backward", &attention_backward_cpu);
}

}  // namespace kernels
