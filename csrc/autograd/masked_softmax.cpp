// Autograd of kernels::masked_softmax_forward in C++: dx = backward(grad, y, scale); a floating mask that requires
// grad gets backward(grad, y, 1) summed over the dimensions it is broadcast along (the mask is added after scaling).
#include <kernels/autograd.h>

namespace kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Optional = std::optional<at::Tensor>;
using Forward = at::Tensor(const at::Tensor&, const Optional&, double, bool);
using Backward = at::Tensor(const at::Tensor&, const at::Tensor&, double);

struct MaskedSoftmax : torch::autograd::Function<MaskedSoftmax> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const Optional& mask, double scale,
                            bool is_causal) {
    static const auto op = autograd::typed_op<Forward>("kernels::masked_softmax_forward");
    at::Tensor y = autograd::call_below_autograd(op, x, mask, scale, is_causal);
    const bool has_mask = mask.has_value() && mask->defined();
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["mask_shape"] = has_mask ? c10::IValue(mask->sizes().vec()) : c10::IValue();
    ctx->save_for_backward({y});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    static const auto op = autograd::typed_op<Backward>("kernels::masked_softmax_backward");
    const at::Tensor y = ctx->get_saved_variables()[0];
    const bool has_mask = !ctx->saved_data["mask_shape"].isNone();
    at::Tensor dx, dmask;
    if (ctx->needs_input_grad(0)) {
      dx = autograd::call_backward(op, grad[0], y, ctx->saved_data["scale"].toDouble());
    }
    if (has_mask && ctx->needs_input_grad(1)) {  // edge 1 is the mask (present only with a mask)
      dmask = autograd::call_backward(op, grad[0], y, 1.0).sum_to_size(ctx->saved_data["mask_shape"].toIntVector());
    }
    return {dx, dmask, {}, {}};
  }
};

at::Tensor masked_softmax_forward_autograd(const at::Tensor& x, const Optional& mask, double scale, bool is_causal) {
  return MaskedSoftmax::apply(x, mask, scale, is_causal);
}

}  // namespace

TORCH_LIBRARY_IMPL(kernels, Autograd, m) { m.impl("masked_softmax_forward", &masked_softmax_forward_autograd); }

}  // namespace kernels
