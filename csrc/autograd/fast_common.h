// What the fast calls (kernels._C.fast; csrc/include/kernels/fast_calls.h) share: the table of natively served
// (device, dtype) pairs per op, and the tests of "plain" arguments. Each test says yes only for the values the Python
// path accepts without a conversion of its own (anything else: the fast call returns None).
#pragma once

#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include <cmath>
#include <optional>

namespace kernels::fast {

namespace py = pybind11;
using Optional = std::optional<at::Tensor>;

// The ops with a fast call; their registry names are kFastOpNames (fast_calls.cpp).
enum FastOp : size_t {
  kLayerNorm,
  kRmsNorm,
  kLinear,
  kFeedForward,
  kAttention,
  kAttentionWithKvCache,
  kVarlenAttention,
  kFastOps
};

// Whether backend "auto" runs `op` natively on `t`'s device and dtype (the table kernels._backend writes).
bool served(FastOp op, const at::Tensor& t);

// A plain tensor argument: torch.Tensor or nn.Parameter (a subclass may override __torch_function__: not plain).
inline const at::Tensor* plain_tensor(py::handle obj) {
  return THPVariable_CheckExact(obj.ptr()) ? &THPVariable_Unpack(obj.ptr()) : nullptr;
}

// None or a plain tensor into `out`; false for anything else.
inline bool optional_tensor(py::handle obj, Optional& out) {
  if (obj.is_none()) return true;
  const at::Tensor* tensor = plain_tensor(obj);
  if (tensor == nullptr) return false;
  out = *tensor;
  return true;
}

// A Python bool (not a truthy value of another type).
inline std::optional<bool> exact_bool(py::handle obj) {
  if (obj.ptr() == Py_True) return true;
  if (obj.ptr() == Py_False) return false;
  return std::nullopt;
}

// A dropout_p of exactly 0 (float or int): the fast calls serve no dropout (the seed is drawn in Python).
inline bool no_dropout(py::handle obj) {
  PyObject* value = obj.ptr();
  return (PyFloat_CheckExact(value) && PyFloat_AS_DOUBLE(value) == 0.0) ||
         (PyLong_CheckExact(value) && PyLong_AsLong(value) == 0);
}

// A float or int as a double (nullopt for other types and for ints too large for a double).
inline std::optional<double> real_number(py::handle obj) {
  if (PyFloat_CheckExact(obj.ptr())) return PyFloat_AS_DOUBLE(obj.ptr());
  if (!PyLong_CheckExact(obj.ptr())) return std::nullopt;
  const double value = PyLong_AsDouble(obj.ptr());
  if (value == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();
    return std::nullopt;
  }
  return value;
}

// The attention scale: None -> 1 / sqrt(head_dim) (computed as Python computes it), else a finite float or int.
inline std::optional<double> attention_scale(py::handle obj, int64_t head_dim) {
  if (obj.is_none()) return 1.0 / std::sqrt(static_cast<double>(head_dim));
  const std::optional<double> value = real_number(obj);
  if (!value || !std::isfinite(*value)) return std::nullopt;
  return value;
}

// An int >= 0 (not a bool).
inline std::optional<int64_t> non_negative_int(py::handle obj) {
  if (!PyLong_CheckExact(obj.ptr())) return std::nullopt;
  int overflow = 0;
  const long long value = PyLong_AsLongLongAndOverflow(obj.ptr(), &overflow);
  if (overflow != 0 || value < 0) return std::nullopt;
  return static_cast<int64_t>(value);
}

void define_attention_fast_calls(py::module& module);

}  // namespace kernels::fast
