// Autograd of kernels::attention_forward in C++ (schema and layouts in csrc/ops.cpp). Saved: q, k, v, out, the row
// log-sum-exp lse, the masks and the dropout seed tensor (the backward rebuilds the same keep-mask from it). lse is
// not differentiable; the masks and the seed get no gradient (the Python layer refuses a mask that requires grad).
#include <kernels/autograd.h>

namespace kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Optional = std::optional<at::Tensor>;
using Forward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                   const Optional&, const Optional&, bool, double, double,
                                                   const Optional&);
using Backward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const Optional&, const Optional&, bool, double, double, const Optional&);

Optional defined_or_none(const at::Tensor& t) { return t.defined() ? Optional(t) : Optional(); }

struct Attention : torch::autograd::Function<Attention> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const Optional& mask, const Optional& key_padding_mask, bool is_causal, double scale,
                               double dropout_p, const Optional& seed) {
    static const auto op = autograd::typed_op<Forward>("kernels::attention_forward");
    auto [out, lse] = autograd::call_below_autograd(op, q, k, v, mask, key_padding_mask, is_causal, scale, dropout_p,
                                                    seed);
    ctx->save_for_backward({q, k, v, out, lse, mask.value_or(at::Tensor()), key_padding_mask.value_or(at::Tensor()),
                            seed.value_or(at::Tensor())});
    ctx->saved_data["is_causal"] = is_causal;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->mark_non_differentiable({lse});
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    static const auto op = autograd::typed_op<Backward>("kernels::attention_backward");
    const auto s = ctx->get_saved_variables();  // q, k, v, out, lse, mask, key_padding_mask, seed
    auto [dq, dk, dv] = autograd::call_backward(
        op, grad[0], s[0], s[1], s[2], s[3], s[4], defined_or_none(s[5]), defined_or_none(s[6]),
        ctx->saved_data["is_causal"].toBool(), ctx->saved_data["scale"].toDouble(),
        ctx->saved_data["dropout_p"].toDouble(), defined_or_none(s[7]));
    return {dq, dk, dv, {}, {}, {}, {}, {}, {}};
  }
};

std::tuple<at::Tensor, at::Tensor> attention_forward_autograd(const at::Tensor& q, const at::Tensor& k,
                                                              const at::Tensor& v, const Optional& mask,
                                                              const Optional& key_padding_mask, bool is_causal,
                                                              double scale, double dropout_p, const Optional& seed) {
  auto out = Attention::apply(q, k, v, mask, key_padding_mask, is_causal, scale, dropout_p, seed);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(kernels, Autograd, m) { m.impl("attention_forward", &attention_forward_autograd); }

}  // namespace kernels
