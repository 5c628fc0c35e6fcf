// kernels._C.fast: the common calls of kernels.layer_norm / rms_norm / linear / feed_forward in one C++ call
// (csrc/include/kernels/fast_calls.h says what and why).
#include <kernels/autograd.h>
#include <kernels/fast_calls.h>

#include <torch/csrc/Dtype.h>

#include "fast_common.h"

#include <array>
#include <bitset>
#include <cmath>
#include <limits>
#include <optional>
#include <string>

namespace kernels::fast {
namespace {

constexpr std::array<const char*, kFastOps> kFastOpNames = {
    "layer_norm", "rms_norm", "linear", "feed_forward", "attention", "attention_with_kv_cache", "varlen_attention"};

// Per op and device type, the dtypes that backend "auto" runs natively (from kernels._backend). Read and written
// under the GIL only.
using DtypeSet = std::bitset<static_cast<size_t>(at::ScalarType::NumOptions)>;
struct Served {
  DtypeSet cpu, cuda;
};
std::array<Served, kFastOps> table;

FastOp fast_op(const std::string& name) {
  for (size_t i = 0; i < kFastOps; ++i) {
    if (name == kFastOpNames[i]) return static_cast<FastOp>(i);
  }
  TORCH_CHECK_VALUE(false, "kernels._C.fast has no fast call for op '", name, "'");
}

void serve(const std::string& op, const std::string& device_type, const py::sequence& dtypes) {
  DtypeSet set;
  for (py::handle dtype : dtypes) {
    TORCH_CHECK_TYPE(THPDtype_Check(dtype.ptr()), "serve(): `dtypes` must hold torch dtypes");
    set.set(static_cast<size_t>(reinterpret_cast<THPDtype*>(dtype.ptr())->scalar_type));
  }
  Served& entry = table[fast_op(op)];
  if (device_type == "cpu") {
    entry.cpu = set;
  } else if (device_type == "cuda") {
    entry.cuda = set;
  }  // other device types never take a fast call
}

// A one-dimensional normalized_shape -- an int, or a tuple / list / torch.Size of one int -- as N >= 1; else -1.
int64_t one_dimension(py::handle obj) {
  PyObject* value = obj.ptr();
  if (PyTuple_Check(value) && PyTuple_GET_SIZE(value) == 1) {
    value = PyTuple_GET_ITEM(value, 0);
  } else if (PyList_Check(value) && PyList_GET_SIZE(value) == 1) {
    value = PyList_GET_ITEM(value, 0);
  }
  if (!PyLong_CheckExact(value)) return -1;  // bool and other integral types: the Python path
  int overflow = 0;
  const long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
  return overflow != 0 || n < 1 ? -1 : static_cast<int64_t>(n);
}

// eps as the Python path takes it: a float or int, finite and >= 0; None for RMS norm: the dtype's machine epsilon
// (torch.finfo(dtype).eps, as F.rms_norm). nullopt for anything else.
std::optional<double> epsilon(py::handle obj, bool rms, at::ScalarType dtype) {
  std::optional<double> value;
  if (rms && obj.is_none()) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "rms_norm_default_eps", [&] {
      value = static_cast<double>(std::numeric_limits<scalar_t>::epsilon());
    });
  } else {
    value = real_number(obj);
  }
  if (!value || !std::isfinite(*value) || *value < 0.0) return std::nullopt;
  return value;
}

// kernels.layer_norm(x, normalized_shape, weight, bias, eps, residual=residual) (bias None for RMS norm) when the
// call is the common one: y, or (y, h) with a residual; None otherwise.
py::object norm(FastOp op, py::handle x_obj, py::handle shape_obj, py::handle weight_obj, py::handle bias_obj,
                py::handle eps_obj, py::handle residual_obj) {
  const at::Tensor* x_ptr = plain_tensor(x_obj);
  const int64_t n = one_dimension(shape_obj);
  Optional weight, bias, residual;
  if (x_ptr == nullptr || n < 1 || !optional_tensor(weight_obj, weight) || !optional_tensor(bias_obj, bias) ||
      !optional_tensor(residual_obj, residual)) {
    return py::none();
  }
  const at::Tensor& x = *x_ptr;
  // The served dtypes are floating ones; empty inputs take the Python path.
  if (!served(op, x) || x.dim() < 1 || x.size(-1) != n || x.numel() == 0) return py::none();
  const bool rms = op == kRmsNorm;
  const std::optional<double> eps = epsilon(eps_obj, rms, x.scalar_type());
  const auto like_x = [&](const at::Tensor& t) { return t.scalar_type() == x.scalar_type() && t.device() == x.device(); };
  const auto parameter_ok = [&](const Optional& p) { return !p || (p->dim() == 1 && p->size(0) == n && like_x(*p)); };
  if (!eps || !parameter_ok(weight) || !parameter_ok(bias) ||
      (residual && !(residual->sizes() == x.sizes() && like_x(*residual)))) {
    return py::none();
  }
  at::Tensor y, h;
  {
    py::gil_scoped_release no_gil;
    using Four = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
    static const auto forward = autograd::typed_op<Four(const at::Tensor&, const Optional&, const Optional&,
                                                        const Optional&, double, bool)>("kernels::layer_norm_forward");
    // (..., N) -> (M, N) rows and back, as the Python path: reshape (a copy only when the strides need one) and view.
    const bool rows = x.dim() == 2;
    const Optional residual_rows = residual && !rows ? Optional(residual->reshape({-1, n})) : residual;
    std::tie(y, h, std::ignore, std::ignore) =
        forward.call(rows ? x : x.reshape({-1, n}), residual_rows, weight, bias, *eps, rms);
    if (!rows) {
      y = y.view(x.sizes());
      if (residual) h = h.view(x.sizes());
    }
  }
  if (!residual) return py::cast(y);
  return py::make_tuple(y, h);
}

// kernels.linear(x, weight, bias) without activation, on the CPU: what the native backend runs there is at::linear
// (F.linear: the platform BLAS, torch's autograd). On CUDA native runs its own composite op (cuBLASLt epilogues):
// the Python path. None for any other call.
py::object linear(py::handle x_obj, py::handle weight_obj, py::handle bias_obj, py::handle activation) {
  const at::Tensor* x_ptr = plain_tensor(x_obj);
  const at::Tensor* weight_ptr = plain_tensor(weight_obj);
  Optional bias;
  if (x_ptr == nullptr || weight_ptr == nullptr || !activation.is_none() || !optional_tensor(bias_obj, bias)) {
    return py::none();
  }
  const at::Tensor &x = *x_ptr, &weight = *weight_ptr;
  if (!x.is_cpu() || !served(kLinear, x) || x.dim() < 1 || weight.dim() != 2 || weight.size(1) != x.size(-1) ||
      weight.scalar_type() != x.scalar_type() || !weight.is_cpu()) {
    return py::none();
  }
  if (bias && !(bias->dim() == 1 && bias->size(0) == weight.size(0) && bias->scalar_type() == x.scalar_type() &&
                bias->is_cpu())) {
    return py::none();
  }
  at::Tensor out;
  {
    py::gil_scoped_release no_gil;
    out = at::linear(x, weight, bias);
  }
  return py::cast(out);
}

// The activation names of kernels.reference.ACTIVATIONS: (name, gated) for a str among them; nullopt otherwise.
std::optional<std::pair<std::string, bool>> activation_of(py::handle obj) {
  if (!PyUnicode_CheckExact(obj.ptr())) return std::nullopt;
  std::string name = obj.cast<std::string>();
  for (const char* plain : {"relu", "gelu", "gelu_tanh", "silu"}) {
    if (name == plain) return std::make_pair(std::move(name), false);
  }
  if (name == "swiglu" || name == "geglu") return std::make_pair(std::move(name), true);
  return std::nullopt;
}

// kernels.feed_forward(x, w1, b1, w2, b2, activation=..., dropout_p=0, residual=...) when no gradient is needed
// (inference: the composite op's eager path, kernels::linear_forward twice) on a (device, dtype) that "auto" runs
// natively; None for any other call (a gradient, dropout, a (gate, up) weight pair, any argument the checks refuse).
py::object feed_forward(py::handle x_obj, py::handle w1_obj, py::handle b1_obj, py::handle w2_obj, py::handle b2_obj,
                        py::handle activation_obj, py::handle dropout_obj, py::handle residual_obj) {
  const at::Tensor* x_ptr = plain_tensor(x_obj);
  const at::Tensor* w1_ptr = plain_tensor(w1_obj);
  const at::Tensor* w2_ptr = plain_tensor(w2_obj);
  Optional b1, b2, residual;
  const auto activation = activation_of(activation_obj);
  if (x_ptr == nullptr || w1_ptr == nullptr || w2_ptr == nullptr || !no_dropout(dropout_obj) || !activation ||
      !optional_tensor(b1_obj, b1) || !optional_tensor(b2_obj, b2) || !optional_tensor(residual_obj, residual)) {
    return py::none();
  }
  const at::Tensor &x = *x_ptr, &w1 = *w1_ptr, &w2 = *w2_ptr;
  if (!served(kFeedForward, x) || x.dim() < 1 || w1.dim() != 2 || w2.dim() != 2 || w1.size(1) != x.size(-1)) {
    return py::none();
  }
  const int64_t width = w1.size(0), ffn = activation->second ? width / 2 : width, d_out = w2.size(0);
  const auto like_x = [&](const at::Tensor& t) { return t.scalar_type() == x.scalar_type() && t.device() == x.device(); };
  const auto bias_ok = [&](const Optional& b, int64_t n) { return !b || (b->dim() == 1 && b->size(0) == n && like_x(*b)); };
  if ((activation->second && width % 2 != 0) || w2.size(1) != ffn || !like_x(w1) || !like_x(w2) || !bias_ok(b1, width) ||
      !bias_ok(b2, d_out)) {
    return py::none();
  }
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = d_out;
  if (residual && !(residual->sizes() == at::IntArrayRef(out_shape) && like_x(*residual))) return py::none();
  if (autograd::needs_graph(x, w1, b1, w2, b2, residual)) return py::none();  // the autograd of the Python path
  at::Tensor out;
  {
    py::gil_scoped_release no_gil;
    using Pair = std::tuple<at::Tensor, at::Tensor>;
    static const auto linear_forward =
        autograd::typed_op<Pair(const at::Tensor&, const at::Tensor&, const Optional&, std::optional<c10::string_view>,
                                double, const at::Tensor&, const Optional&, bool)>("kernels::linear_forward");
    const at::Tensor seed = at::zeros({1}, x.options().dtype(at::kLong));  // read only with dropout
    // (..., d) -> (M, d) rows; h = act(x @ w1.T + b1): (M, ffn); out = residual + h @ w2.T + b2: (M, d_out).
    const bool rows = x.dim() == 2;
    const at::Tensor h = std::get<0>(linear_forward.call(rows ? x : x.reshape({-1, x.size(-1)}), w1, b1,
                                                         activation->first, 0.0, seed, std::nullopt, false));
    const Optional residual_rows = residual && !rows ? Optional(residual->reshape({-1, d_out})) : residual;
    out = std::get<0>(linear_forward.call(h, w2, b2, std::nullopt, 0.0, seed, residual_rows, false));
    if (!rows) out = out.view(out_shape);
  }
  return py::cast(out);
}

}  // namespace

bool served(FastOp op, const at::Tensor& t) {
  const auto dtype = static_cast<size_t>(t.scalar_type());
  switch (t.device().type()) {
    case c10::DeviceType::CPU:
      return table[op].cpu.test(dtype);
    case c10::DeviceType::CUDA:
      return table[op].cuda.test(dtype);
    default:
      return false;
  }
}

}  // namespace kernels::fast

namespace kernels {

void define_fast_calls(pybind11::module& module) {
  using namespace fast;
  module.def("serve", &serve, py::arg("op"), py::arg("device_type"), py::arg("dtypes"),
             "Sets the dtypes that backend 'auto' runs natively for `op` on `device_type` (kernels._backend)");
  module.def(
      "layer_norm",
      [](py::handle x, py::handle normalized_shape, py::handle weight, py::handle bias, py::handle eps,
         py::handle residual) { return norm(kLayerNorm, x, normalized_shape, weight, bias, eps, residual); },
      "kernels.layer_norm's common call, or None");
  module.def(
      "rms_norm",
      [](py::handle x, py::handle normalized_shape, py::handle weight, py::handle eps, py::handle residual) {
        return norm(kRmsNorm, x, normalized_shape, weight, py::none(), eps, residual);
      },
      "kernels.rms_norm's common call, or None");
  module.def("linear", &linear, "kernels.linear's common call on the CPU, or None");
  module.def("feed_forward", &feed_forward, "kernels.feed_forward's common call without autograd, or None");
  define_attention_fast_calls(module);
  module.def("ops", [] { return std::vector<std::string>(kFastOpNames.begin(), kFastOpNames.end()); },
             "The registry names of the ops with a fast call");
}

}  // namespace kernels
