// kernels.linear / kernels.feed_forward on the CPU: the GEMM is at::addmm / at::mm (the platform BLAS), followed by
// ONE fused, vectorised epilogue pass of our own:
//   forward   out = residual + dropout(act(pre)) (gated: act(gate) * up), pre = x @ w.T + b from addmm (bias in the
//             GEMM); for a Linear without activation or dropout the residual and bias are written first and the GEMM
//             accumulates onto them (addmm_, beta = 1), so the residual add costs no extra pass;
//   backward  grad_pre = act'(pre) * dropout(grad @ w) with the bias gradient (column sums) in the same pass,
//             parallel over column blocks so each sum is accumulated by one thread in row order (deterministic).
// Arithmetic in the op-math type (fp32 for fp32/bf16, fp64 for fp64), outputs in the input dtype.
//
// Vectorisation: at::vec::Vectorized with SLEEF's exp/erf/tanh (exported by libtorch_cpu). ATen selects its AVX2
// implementation only under CPU_CAPABILITY_AVX2, which ATen defines for its own per-ISA builds; when this file is
// compiled for an AVX2 + FMA machine (-march=native) we define it here, in a namespace of its own (at::vec::AVX2) so
// nothing clashes with other translation units. Without it (KERNELS_PORTABLE=1) the generic Vectorized is used.
#if defined(__AVX2__) && defined(__FMA__) && !defined(CPU_CAPABILITY)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <kernels/checks.h>
#include <kernels/linear_checks.h>
#include <kernels/linear_epilogue.h>
#include <kernels/outputs.h>
#include <kernels/philox.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace kernels {
namespace {

using at::vec::Vectorized;

// Loads/stores n <= size() elements of scalar_t as one vector of its op-math type (zeros past n).
template <typename acc_t, typename scalar_t>
inline Vectorized<acc_t> load(const scalar_t* data, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return Vectorized<acc_t>::loadu(data, n);
  } else {
    acc_t buffer[Vectorized<acc_t>::size()] = {};
    for (int64_t i = 0; i < n; ++i) buffer[i] = static_cast<acc_t>(data[i]);
    return Vectorized<acc_t>::loadu(buffer);
  }
}

template <typename acc_t, typename scalar_t>
inline void store(scalar_t* data, const Vectorized<acc_t>& value, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    value.store(data, n);
  } else {
    acc_t buffer[Vectorized<acc_t>::size()];
    value.store(buffer);
    for (int64_t i = 0; i < n; ++i) data[i] = static_cast<scalar_t>(buffer[i]);
  }
}

// The activation is a template argument, so each epilogue loop is compiled per activation with no branch inside.
template <Activation A, typename T>
inline Vectorized<T> activate_vec(const Vectorized<T>& x) {
  const Vectorized<T> one(T(1)), half(T(0.5));
  if constexpr (A == Activation::kRelu) {
    return at::vec::clamp_min(x, Vectorized<T>(T(0)));
  } else if constexpr (A == Activation::kGelu) {
    return half * x * (one + (x * Vectorized<T>(T(kSqrtHalf))).erf());
  } else if constexpr (A == Activation::kGeluTanh) {
    const auto inner = Vectorized<T>(T(kSqrtTwoOverPi)) * (x + Vectorized<T>(T(kGeluTanhCubic)) * x * x * x);
    return half * x * (one + inner.tanh());
  } else if constexpr (A == Activation::kSilu) {
    return x / (one + x.neg().exp());
  } else {
    return x;
  }
}

template <Activation A, typename T>
inline Vectorized<T> activate_grad_vec(const Vectorized<T>& x) {
  const Vectorized<T> one(T(1)), half(T(0.5));
  if constexpr (A == Activation::kRelu) {
    return Vectorized<T>::blendv(Vectorized<T>(T(0)), one, x > Vectorized<T>(T(0)));
  } else if constexpr (A == Activation::kGelu) {
    const auto cdf = half * (one + (x * Vectorized<T>(T(kSqrtHalf))).erf());
    const auto pdf = Vectorized<T>(T(kInvSqrtTwoPi)) * (Vectorized<T>(T(-0.5)) * x * x).exp();
    return cdf + x * pdf;
  } else if constexpr (A == Activation::kGeluTanh) {
    const auto t = (Vectorized<T>(T(kSqrtTwoOverPi)) * (x + Vectorized<T>(T(kGeluTanhCubic)) * x * x * x)).tanh();
    const auto slope = Vectorized<T>(T(kSqrtTwoOverPi)) * (one + Vectorized<T>(T(3 * kGeluTanhCubic)) * x * x);
    return half * (one + t) + half * x * (one - t * t) * slope;
  } else if constexpr (A == Activation::kSilu) {
    const auto s = one / (one + x.neg().exp());
    return s * (one + x * (one - s));
  } else {
    return one;
  }
}

// Calls body(std::integral_constant<Activation, A>{}) for the runtime activation.
template <typename Body>
inline void with_activation(Activation activation, const Body& body) {
  switch (activation) {
    case Activation::kRelu: return body(std::integral_constant<Activation, Activation::kRelu>{});
    case Activation::kGelu: return body(std::integral_constant<Activation, Activation::kGelu>{});
    case Activation::kGeluTanh: return body(std::integral_constant<Activation, Activation::kGeluTanh>{});
    case Activation::kSilu: return body(std::integral_constant<Activation, Activation::kSilu>{});
    default: return body(std::integral_constant<Activation, Activation::kNone>{});
  }
}

// Per-lane dropout factors (scale where kept, 0 where dropped) for columns [col, col + n) of one row; the counter of
// element (row, col) is row * width + col modulo 2**32, as in the Triton kernel.
template <typename T>
inline Vectorized<T> dropout_factors(uint64_t seed, int64_t row, int64_t width, int64_t col, int64_t n, float p,
                                     T scale) {
  T factors[Vectorized<T>::size()] = {};
  const uint64_t base = static_cast<uint64_t>(row) * static_cast<uint64_t>(width) + static_cast<uint64_t>(col);
  for (int64_t i = 0; i < n; ++i) {
    factors[i] = philox_uniform(seed, static_cast<uint32_t>(base + i)) >= p ? scale : T(0);
  }
  return Vectorized<T>::loadu(factors);
}

struct Dropout {
  bool enabled = false;
  uint64_t seed = 0;
  float p = 0.0f;
  double scale = 1.0;
};

Dropout make_dropout(double p, const at::Tensor& seed) {
  if (!(p > 0.0)) return {};
  TORCH_CHECK_VALUE(seed.numel() == 1 && seed.scalar_type() == at::kLong, "argument `seed` must be a one-element "
                    "int64 tensor, got dtype ", seed.scalar_type(), " and ", seed.numel(), " elements");
  return {true, static_cast<uint64_t>(seed.item<int64_t>()), static_cast<float>(p), dropout_scale(p)};
}

// out (M, N) = residual + dropout(act(gate)) [* up]: gate = pre[:, :N], up = pre[:, N:] when gated. `out` may be
// `pre` itself (in place, not gated). All tensors contiguous.
template <typename scalar_t>
void forward_epilogue(const at::Tensor& pre, at::Tensor& out, const at::Tensor* residual, ActivationSpec spec,
                      const Dropout& dropout) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  const int64_t M = out.size(0), N = out.size(1), width = pre.size(1);
  const scalar_t* pre_data = pre.const_data_ptr<scalar_t>();
  const scalar_t* res_data = residual ? residual->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
  const auto scale = static_cast<acc_t>(dropout.scale);
  with_activation(spec.activation, [&](auto activation) {
    constexpr Activation A = decltype(activation)::value;
    // One vector of columns [col, col + n) of one row.
    const auto element = [&](int64_t row, int64_t col, int64_t n) {
      const scalar_t* gate = pre_data + row * width;
      Vec y = activate_vec<A>(load<acc_t>(gate + col, n));
      if (spec.gated) y = y * load<acc_t>(gate + N + col, n);
      if (dropout.enabled) y = y * dropout_factors<acc_t>(dropout.seed, row, N, col, n, dropout.p, scale);
      if (res_data) y = y + load<acc_t>(res_data + row * N + col, n);
      store(out_data + row * N + col, y, n);
    };
    at::parallel_for(0, M, std::max<int64_t>(1, 16384 / std::max<int64_t>(N, 1)), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        int64_t col = 0;
        for (; col + 2 * Vec::size() <= N; col += 2 * Vec::size()) {  // two independent vectors per step
          element(row, col, Vec::size());
          element(row, col + Vec::size(), Vec::size());
        }
        for (; col < N; col += Vec::size()) element(row, col, std::min<int64_t>(Vec::size(), N - col));
      }
    });
  });
}

// out (M, N) = residual + bias, the C operand that addmm_ then accumulates x @ w.T onto.
template <typename scalar_t>
void residual_plus_bias(const at::Tensor& residual, const at::Tensor* bias, at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  const int64_t M = out.size(0), N = out.size(1);
  const scalar_t* res = residual.const_data_ptr<scalar_t>();
  const scalar_t* b = bias ? bias->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* dst = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, M, std::max<int64_t>(1, 32768 / std::max<int64_t>(N, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      for (int64_t col = 0; col < N; col += Vec::size()) {
        const int64_t n = std::min<int64_t>(Vec::size(), N - col);
        Vec y = load<acc_t>(res + row * N + col, n);
        if (b) y = y + load<acc_t>(b + col, n);
        store(dst + row * N + col, y, n);
      }
    }
  });
}

// Up to this many pre-activation elements a lone GELU runs in our epilogue loop, above it in at::gelu_out (above).
constexpr int64_t kSmallGeluElements = 4096;

std::tuple<at::Tensor, at::Tensor> linear_forward_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                      const std::optional<at::Tensor>& bias,
                                                      std::optional<c10::string_view> activation, double dropout_p,
                                                      const at::Tensor& seed, const std::optional<at::Tensor>& residual,
                                                      bool save_pre) {
  const ActivationSpec spec = parse_activation(activation);
  const at::Tensor res =
      check_linear_forward(x, weight, bias, residual, spec, {at::kFloat, at::kDouble, at::kBFloat16});
  const int64_t M = x.size(0), width = weight.size(0), N = spec.gated ? width / 2 : width;
  const Dropout dropout = make_dropout(dropout_p, seed);
  const auto options = x.options().memory_format(at::MemoryFormat::Contiguous);
  const at::Tensor weight_t = weight.t();  // (K, width), a view: BLAS takes the transpose flag
  const at::Tensor* bias_ptr = bias.has_value() ? &*bias : nullptr;
  at::Tensor empty_pre = empty_output({0, width}, options);

  if (spec.activation == Activation::kNone && !dropout.enabled && !save_pre) {
    if (!res.defined()) {
      return {bias_ptr ? at::addmm(*bias_ptr, x, weight_t) : at::mm(x, weight_t), empty_pre};
    }
    at::Tensor out = empty_output({M, N}, options);
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "linear_residual_cpu", [&] {
      residual_plus_bias<scalar_t>(res, bias_ptr, out);
    });
    out.addmm_(x, weight_t);  // out = 1 * out + x @ w.T
    return {out, empty_pre};
  }
  at::Tensor pre = bias_ptr ? at::addmm(*bias_ptr, x, weight_t) : at::mm(x, weight_t);  // (M, width), contiguous
  const bool in_place = !spec.gated && !save_pre;
  at::Tensor out = in_place ? pre : empty_output({M, N}, options);
  if (spec.activation == Activation::kGelu && !spec.gated && !dropout.enabled && !res.defined() &&
      pre.numel() > kSmallGeluElements) {
    // A lone erf GELU: torch's own kernel (oneDNN's JIT on x86) took 5.5 ms on 2048 x 3072 fp32, one thread, where
    // our SLEEF-based vector loop took ~9 ms; the in-place call still saves eager's second allocation. Below
    // kSmallGeluElements our loop wins: at::gelu_out costs ~5 us per call before any element (1 x 512: 6.0 us
    // against ~0.5 for the loop; decoding one token), and the loop costs ~0.9 ns per element against ~0.2.
    at::gelu_out(out, pre);
    return {out, save_pre ? pre : empty_pre};
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "linear_forward_cpu", [&] {
    forward_epilogue<scalar_t>(pre, out, res.defined() ? &res : nullptr, spec, dropout);
  });
  return {out, save_pre ? pre : empty_pre};
}

// residual + dropout(act(pre)) (gated: act(gate) * up) for a pre-activation computed elsewhere: the gated block with
// separate gate and up weights (kernels/_ops/feed_forward_native.py writes both GEMMs into the halves of `pre`).
at::Tensor linear_epilogue_cpu(const at::Tensor& pre, std::optional<c10::string_view> activation, double dropout_p,
                               const at::Tensor& seed, const std::optional<at::Tensor>& residual) {
  const ActivationSpec spec = parse_activation(activation);
  const at::Tensor res = check_linear_epilogue(pre, residual, spec, {at::kFloat, at::kDouble, at::kBFloat16});
  const int64_t M = pre.size(0), N = spec.gated ? pre.size(1) / 2 : pre.size(1);
  const Dropout dropout = make_dropout(dropout_p, seed);
  const at::Tensor pre_c = pre.contiguous();
  at::Tensor out = empty_output({M, N}, pre.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, pre.scalar_type(), "linear_epilogue_cpu", [&] {
    forward_epilogue<scalar_t>(pre_c, out, res.defined() ? &res : nullptr, spec, dropout);
  });
  return out;
}

// grad_pre (M, width) = act'(pre) * dropout(dh), with the gated split, and bias_grad (width) = its column sums.
template <typename scalar_t>
void backward_epilogue(const at::Tensor& dh, const at::Tensor& pre, at::Tensor& grad_pre, at::Tensor& bias_grad,
                       ActivationSpec spec, const Dropout& dropout) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t kColumns = 16 * Vec::size();  // one thread owns a block of columns over all rows
  const int64_t M = pre.size(0), width = pre.size(1), N = dh.size(1);
  const scalar_t* dh_data = dh.const_data_ptr<scalar_t>();
  const scalar_t* pre_data = pre.const_data_ptr<scalar_t>();
  scalar_t* out_data = grad_pre.mutable_data_ptr<scalar_t>();
  acc_t* bias_data = bias_grad.mutable_data_ptr<acc_t>();
  const auto scale = static_cast<acc_t>(dropout.scale);
  const int64_t blocks = (N + kColumns - 1) / kColumns;
  with_activation(spec.activation, [&](auto activation) {
    constexpr Activation A = decltype(activation)::value;
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        const int64_t first = block * kColumns, last = std::min(N, first + kColumns);
        acc_t sums[kColumns] = {}, sums_up[kColumns] = {};
        for (int64_t row = 0; row < M; ++row) {
          const scalar_t* gate = pre_data + row * width;
          scalar_t* dst = out_data + row * width;
          for (int64_t col = first; col < last; col += Vec::size()) {
            const int64_t n = std::min<int64_t>(Vec::size(), last - col);
            Vec d = load<acc_t>(dh_data + row * N + col, n);
            if (dropout.enabled) d = d * dropout_factors<acc_t>(dropout.seed, row, N, col, n, dropout.p, scale);
            const Vec x = load<acc_t>(gate + col, n);
            acc_t* sum = sums + (col - first);
            if (spec.gated) {
              // h = act(gate) * up: d gate = d * up * act'(gate), d up = d * act(gate).
              const Vec d_gate = d * load<acc_t>(gate + N + col, n) * activate_grad_vec<A>(x);
              const Vec d_up = d * activate_vec<A>(x);
              store(dst + col, d_gate, n);
              store(dst + N + col, d_up, n);
              (Vec::loadu(sum) + d_gate).store(sum);
              acc_t* sum_up = sums_up + (col - first);
              (Vec::loadu(sum_up) + d_up).store(sum_up);
            } else {
              const Vec d_pre = d * activate_grad_vec<A>(x);
              store(dst + col, d_pre, n);
              (Vec::loadu(sum) + d_pre).store(sum);
            }
          }
        }
        std::copy(sums, sums + (last - first), bias_data + first);
        if (spec.gated) std::copy(sums_up, sums_up + (last - first), bias_data + N + first);
      }
    });
  });
}

std::tuple<at::Tensor, at::Tensor> linear_act_backward_cpu(const at::Tensor& grad,
                                                           const std::optional<at::Tensor>& weight,
                                                           const at::Tensor& pre,
                                                           std::optional<c10::string_view> activation,
                                                           double dropout_p, const at::Tensor& seed) {
  check_dim(grad, "grad", 2);
  check_dim(pre, "pre", 2);
  check_dtype(pre, "pre", {at::kFloat, at::kDouble, at::kBFloat16});
  check_same_dtype(grad, "grad", pre, "pre");
  const ActivationSpec spec = parse_activation(activation);
  const int64_t M = pre.size(0), width = pre.size(1), N = spec.gated ? width / 2 : width;
  at::Tensor dh;  // gradient of the activation's (dropped-out) output, (M, N)
  if (weight.has_value()) {
    check_same_dtype(*weight, "weight", pre, "pre");
    dh = at::mm(grad, *weight).contiguous();
  } else {
    dh = grad.contiguous();
  }
  TORCH_CHECK_VALUE(dh.size(0) == M && dh.size(1) == N, "argument `grad` gives an activation gradient of shape ",
                    dh.sizes(), "; expected (", M, ", ", N, ") for `pre` of shape ", pre.sizes());
  const Dropout dropout = make_dropout(dropout_p, seed);
  const at::Tensor pre_c = pre.contiguous();
  at::Tensor grad_pre = empty_output(pre.sizes(), pre.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor bias_grad = at::zeros({width}, pre.options().dtype(at::toOpMathType(pre.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, pre.scalar_type(), "linear_act_backward_cpu", [&] {
    backward_epilogue<scalar_t>(dh, pre_c, grad_pre, bias_grad, spec, dropout);
  });
  return {grad_pre, bias_grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(kernels, CPU, m) {
  m.impl("linear_forward", &linear_forward_cpu);
  m.impl("linear_act_backward", &linear_act_backward_cpu);
  m.impl("linear_epilogue", &linear_epilogue_cpu);
  m.impl("linear_weight_grad", &linear_weight_grad_mm);
}

}  // namespace kernels
