// kernels._C.direct: typed Python entry points of the forward ops (csrc/include/kernels/direct_calls.h says why).
#include <kernels/autograd.h>
#include <kernels/direct_calls.h>

namespace kernels {
namespace {

using Optional = std::optional<at::Tensor>;

// Defines module.<name>(args...) calling kernels::<name> through its typed handle, with the GIL released while the
// op runs (as torch.ops does).
template <class Result, class... Args>
void define_direct(pybind11::module& module, const char* name, Result (*)(Args...)) {
  const auto op = autograd::typed_op<Result(Args...)>((std::string("kernels::") + name).c_str());
  module.def(name, [op](Args... args) -> Result {
    pybind11::gil_scoped_release no_gil;
    return op.call(args...);
  });
}

template <class Signature>
constexpr Signature* signature = nullptr;

}  // namespace

void define_direct_calls(pybind11::module& module) {
  using Pair = std::tuple<at::Tensor, at::Tensor>;
  using Four = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
  define_direct(module, "attention_forward",
                signature<Pair(const at::Tensor&, const at::Tensor&, const at::Tensor&, const Optional&,
                               const Optional&, bool, double, double, const Optional&)>);
  define_direct(module, "varlen_attention_forward",
                signature<Pair(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const at::Tensor&, int64_t, int64_t, bool, double, double, const Optional&)>);
  define_direct(module, "layer_norm_forward",
                signature<Four(const at::Tensor&, const Optional&, const Optional&, const Optional&, double, bool)>);
  define_direct(module, "residual_add", signature<at::Tensor(const at::Tensor&, const at::Tensor&)>);
  define_direct(module, "linear_forward",
                signature<Pair(const at::Tensor&, const at::Tensor&, const Optional&,
                               std::optional<c10::string_view>, double, const at::Tensor&, const Optional&, bool)>);
  define_direct(module, "masked_softmax_forward",
                signature<at::Tensor(const at::Tensor&, const Optional&, double, bool)>);
}

}  // namespace kernels
