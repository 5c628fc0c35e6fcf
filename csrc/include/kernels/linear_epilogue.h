// The activations of kernels.linear / kernels.feed_forward and their derivatives, as scalar functions usable on the
// host and on the device (the CPU kernel's tail loop and bf16 path, and the CUDA epilogue kernels). The vectorised
// CPU versions live in csrc/cpu/linear.cpp. Gated activations (swiglu, geglu) apply their activation to the gate.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <string>

namespace kernels {

enum class Activation { kNone, kRelu, kGelu, kGeluTanh, kSilu };

struct ActivationSpec {
  Activation activation = Activation::kNone;
  bool gated = false;
};

inline ActivationSpec parse_activation(const std::optional<c10::string_view>& name) {
  if (!name.has_value()) return {};
  const std::string value(name->data(), name->size());
  if (value == "relu") return {Activation::kRelu, false};
  if (value == "gelu") return {Activation::kGelu, false};
  if (value == "gelu_tanh") return {Activation::kGeluTanh, false};
  if (value == "silu") return {Activation::kSilu, false};
  if (value == "swiglu") return {Activation::kSilu, true};
  if (value == "geglu") return {Activation::kGelu, true};
  TORCH_CHECK_VALUE(false, "argument `activation` must be one of relu, gelu, gelu_tanh, silu, swiglu, geglu or None; "
                    "got '", value, "'");
}

constexpr double kSqrtHalf = 0.70710678118654752440;     // erf GELU: x * Phi(x) = x / 2 * (1 + erf(x / sqrt 2))
constexpr double kSqrtTwoOverPi = 0.79788456080286535588;  // tanh GELU
constexpr double kInvSqrtTwoPi = 0.39894228040143267794;   // the normal pdf
constexpr double kGeluTanhCubic = 0.044715;

template <typename T>
C10_HOST_DEVICE inline T activate(T x, Activation activation) {
  switch (activation) {
    case Activation::kRelu:
      return x > T(0) ? x : T(0);
    case Activation::kGelu:
      return T(0.5) * x * (T(1) + ::erf(x * T(kSqrtHalf)));
    case Activation::kGeluTanh:
      return T(0.5) * x * (T(1) + ::tanh(T(kSqrtTwoOverPi) * (x + T(kGeluTanhCubic) * x * x * x)));
    case Activation::kSilu:
      return x / (T(1) + ::exp(-x));
    default:
      return x;
  }
}

template <typename T>
C10_HOST_DEVICE inline T activate_grad(T x, Activation activation) {
  switch (activation) {
    case Activation::kRelu:
      return x > T(0) ? T(1) : T(0);
    case Activation::kGelu:
      return T(0.5) * (T(1) + ::erf(x * T(kSqrtHalf))) + x * T(kInvSqrtTwoPi) * ::exp(T(-0.5) * x * x);
    case Activation::kGeluTanh: {
      const T t = ::tanh(T(kSqrtTwoOverPi) * (x + T(kGeluTanhCubic) * x * x * x));
      return T(0.5) * (T(1) + t) +
             T(0.5) * x * (T(1) - t * t) * T(kSqrtTwoOverPi) * (T(1) + T(3 * kGeluTanhCubic) * x * x);
    }
    case Activation::kSilu: {
      const T s = T(1) / (T(1) + ::exp(-x));
      return s * (T(1) + x * (T(1) - s));
    }
    default:
      return T(1);
  }
}

// Dropout keeps an element with probability 1 - p and scales it by 1 / (1 - p); p = 1 drops everything.
inline double dropout_scale(double p) { return p < 1.0 ? 1.0 / (1.0 - p) : 0.0; }

}  // namespace kernels
