// Autograd of kernels::layer_norm_forward in C++ (the contract of the pair in kernels/_ops/_layer_norm_common.py).
//
// Saved: the normalised input h (x, or the returned h = x + residual), mean, rstd and weight. Outputs that receive no
// gradient arrive undefined (materialize_grads off): a post-norm layer that drops h costs no (M, N) zeros; a layer
// whose y is unused passes dh straight to x and residual.
#include <kernels/autograd.h>

namespace kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Optional = std::optional<at::Tensor>;
using Forward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const Optional&, const Optional&, const Optional&, double, bool);
using Backward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const Optional&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const Optional&, bool,
    bool);

struct LayerNorm : torch::autograd::Function<LayerNorm> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const Optional& residual,
                               const Optional& weight, const Optional& bias, double eps, bool rms) {
    static const auto op = autograd::typed_op<Forward>("kernels::layer_norm_forward");
    auto [y, h, mean, rstd] = autograd::call_below_autograd(op, x, residual, weight, bias, eps, rms);
    const bool has_residual = residual.has_value() && residual->defined();
    ctx->saved_data["has_residual"] = has_residual;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["rms"] = rms;
    ctx->save_for_backward({has_residual ? h : x, mean, rstd, weight.value_or(at::Tensor())});
    ctx->mark_non_differentiable(has_residual ? variable_list{mean, rstd} : variable_list{h, mean, rstd});
    ctx->set_materialize_grads(false);
    return {y, h, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    static const auto op = autograd::typed_op<Backward>("kernels::layer_norm_backward");
    const bool has_residual = ctx->saved_data["has_residual"].toBool();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& weight = saved[3];
    const at::Tensor& dy = grad[0];
    at::Tensor dh = has_residual ? grad[1] : at::Tensor();
    if (!dy.defined()) {  // only h was used: its gradient passes to x and residual; none reaches weight and bias
      return {dh, dh, {}, {}, {}, {}};
    }
    auto [dx, dweight, dbias] = autograd::call_backward(
        op, dy, dh.defined() ? Optional(dh) : Optional(), saved[0], saved[1], saved[2],
        weight.defined() ? Optional(weight) : Optional(), has_bias, ctx->saved_data["rms"].toBool());
    return {dx, has_residual ? dx : at::Tensor(), weight.defined() ? dweight : at::Tensor(),
            has_bias ? dbias : at::Tensor(), {}, {}};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_forward_autograd(
    const at::Tensor& x, const Optional& residual, const Optional& weight, const Optional& bias, double eps, bool rms) {
  auto out = LayerNorm::apply(x, residual, weight, bias, eps, rms);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(kernels, Autograd, m) { m.impl("layer_norm_forward", &layer_norm_forward_autograd); }

}  // namespace kernels
