// Autograd of kernels::varlen_attention_forward in C++ (packed sequences; schema in csrc/ops.cpp). Saved: q, k, v,
// out, lse, the offsets and the dropout seed tensor; lse is not differentiable, the offsets get no gradient.
#include <kernels/autograd.h>

namespace kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Optional = std::optional<at::Tensor>;
using Forward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                   const at::Tensor&, const at::Tensor&, int64_t, int64_t, bool,
                                                   double, double, const Optional&);
using Backward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, int64_t, int64_t, bool, double, double, const Optional&);

struct VarlenAttention : torch::autograd::Function<VarlenAttention> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                               int64_t max_seqlen_k, bool is_causal, double scale, double dropout_p,
                               const Optional& seed) {
    static const auto op = autograd::typed_op<Forward>("kernels::varlen_attention_forward");
    auto [out, lse] = autograd::call_below_autograd(op, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                                    max_seqlen_k, is_causal, scale, dropout_p, seed);
    ctx->save_for_backward({q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seed.value_or(at::Tensor())});
    ctx->saved_data["max_seqlen_q"] = max_seqlen_q;
    ctx->saved_data["max_seqlen_k"] = max_seqlen_k;
    ctx->saved_data["is_causal"] = is_causal;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->mark_non_differentiable({lse});
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    static const auto op = autograd::typed_op<Backward>("kernels::varlen_attention_backward");
    const auto s = ctx->get_saved_variables();  // q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, seed
    const auto& d = ctx->saved_data;
    auto [dq, dk, dv] = autograd::call_backward(
        op, grad[0], s[0], s[1], s[2], s[3], s[4], s[5], s[6], d.at("max_seqlen_q").toInt(),
        d.at("max_seqlen_k").toInt(), d.at("is_causal").toBool(), d.at("scale").toDouble(),
        d.at("dropout_p").toDouble(), s[7].defined() ? Optional(s[7]) : Optional());
    return {dq, dk, dv, {}, {}, {}, {}, {}, {}, {}, {}};
  }
};

std::tuple<at::Tensor, at::Tensor> varlen_attention_forward_autograd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, bool is_causal, double scale,
    double dropout_p, const Optional& seed) {
  auto out = VarlenAttention::apply(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, is_causal, scale,
                                    dropout_p, seed);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(kernels, Autograd, m) { m.impl("varlen_attention_forward", &varlen_attention_forward_autograd); }

}  // namespace kernels
