// Fused CPU attention on packed sequences (varlen_attention_forward / _backward): (T, H, D) tensors viewed as
// (1, H, T, D), one sequence per pair of offsets; the kernels are the dense ones (attention_common.h).
#include <torch/library.h>

#include <kernels/checks.h>
#include <kernels/outputs.h>

#include "attention_common.h"

namespace kernels {
namespace {

using namespace cpu_attention;

// (T, H, D) -> the (1, H, T, D) view the kernels index.
at::Tensor heads_first(const at::Tensor& x) { return x.transpose(0, 1).unsqueeze(0); }

// A varlen call: checks every argument; one sequence per pair of offsets (int32 (N + 1,), non-decreasing, within the
// packed tensors, lengths within max_seqlen).
Problem make_varlen_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_q,
                            const at::Tensor& cu_k, int64_t max_q, int64_t max_k, bool is_causal, double scale,
                            double dropout_p, const std::optional<at::Tensor>& seed) {
  check_attention_qkv(q, k, v, 3, {at::kFloat, at::kDouble, at::kBFloat16});
  for (const auto& [cu, name] : {std::pair{cu_q, "cu_seqlens_q"}, std::pair{cu_k, "cu_seqlens_k"}}) {
    check_dtype(cu, name, {at::kInt});
    check_dim(cu, name, 1);
    check_same_device(cu, name, q, "q");
    TORCH_CHECK_VALUE(cu.numel() >= 1, "argument `", name, "` is empty; expected (N + 1,) offsets");
  }
  TORCH_CHECK_VALUE(cu_k.numel() == cu_q.numel(), "argument `cu_seqlens_k` has ", cu_k.numel(), " entries; expected ",
                    cu_q.numel(), " like `cu_seqlens_q`");
  Problem p = make_common(heads_first(q), heads_first(k), is_causal, scale, dropout_p, seed);
  const at::Tensor oq = cu_q.contiguous(), ok = cu_k.contiguous();
  const int32_t* offq = oq.const_data_ptr<int32_t>();
  const int32_t* offk = ok.const_data_ptr<int32_t>();
  p.key_base.push_back(0);
  for (int64_t i = 0; i + 1 < cu_q.numel(); ++i) {
    const int64_t lq = offq[i + 1] - offq[i], lk = offk[i + 1] - offk[i];
    TORCH_CHECK_VALUE(offq[i] >= 0 && lq >= 0 && offq[i + 1] <= p.sq_total, "argument `cu_seqlens_q` has offsets ",
                      offq[i], ", ", offq[i + 1], " at ", i, "; expected non-decreasing offsets within the ",
                      p.sq_total, " rows of `q`");
    TORCH_CHECK_VALUE(offk[i] >= 0 && lk >= 0 && offk[i + 1] <= p.sk_total, "argument `cu_seqlens_k` has offsets ",
                      offk[i], ", ", offk[i + 1], " at ", i, "; expected non-decreasing offsets within the ",
                      p.sk_total, " rows of `k`");
    TORCH_CHECK_VALUE(lq <= max_q && lk <= max_k, "sequence ", i, " has lengths ", lq, " (q) and ", lk,
                      " (k); arguments `max_seqlen_q` = ", max_q, " and `max_seqlen_k` = ", max_k,
                      " must bound them");
    add_sequence(p, Sequence{0, offq[i], lq, offk[i], lk});
  }
  return p;
}

std::tuple<at::Tensor, at::Tensor> varlen_attention_forward_cpu(const at::Tensor& q, const at::Tensor& k,
                                                                const at::Tensor& v, const at::Tensor& cu_seqlens_q,
                                                                const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                                                                int64_t max_seqlen_k, bool is_causal, double scale,
                                                                double dropout_p,
                                                                const std::optional<at::Tensor>& seed) {
  Problem p = make_varlen_problem(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, is_causal, scale,
                                  dropout_p, seed);
  at::Tensor out = empty_output(q.sizes(), q.options());                                 // (Tq, H, D)
  at::Tensor lse = empty_output({p.heads, p.sq_total}, q.options().dtype(lse_type(q)));  // (H, Tq)
  at::Tensor out_view = heads_first(out), lse_view = lse.unsqueeze(0);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "varlen_attention_forward_cpu", [&] {
    forward_kernel<scalar_t>(p, heads_first(q), heads_first(k), heads_first(v), out_view, lse_view);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
    int64_t max_seqlen_k, bool is_causal, double scale, double dropout_p, const std::optional<at::Tensor>& seed) {
  Problem p = make_varlen_problem(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, is_causal, scale,
                                  dropout_p, seed);
  const std::vector<int64_t> lse_shape{p.heads, p.sq_total};
  check_backward_inputs(grad_out, q, out, lse, lse_shape);
  at::Tensor dq = empty_output(q.sizes(), q.options());
  at::Tensor dk = empty_output(k.sizes(), q.options());
  at::Tensor dv = empty_output(k.sizes(), q.options());
  at::Tensor dq_view = heads_first(dq), dk_view = heads_first(dk), dv_view = heads_first(dv);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "varlen_attention_backward_cpu", [&] {
    backward_kernel<scalar_t>(p, heads_first(grad_out), heads_first(q), heads_first(k), heads_first(v),
                              heads_first(out), lse.unsqueeze(0), dq_view, dk_view, dv_view);
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(kernels, CPU, m) {
  m.impl("varlen_attention_forward", &varlen_attention_forward_cpu);
  m.impl("varlen_attention_backward", &varlen_attention_backward_cpu);
}

}  // namespace kernels
