// What the C++ autograd of the ops (csrc/autograd/<op>.cpp) shares: a typed handle to a registered op, and the call of
// a backward op from an autograd Function's backward.
//
// Each forward op has its autograd kernel in C++ (TORCH_LIBRARY_IMPL(kernels, Autograd, m)): the Python layer calls
// torch.ops.kernels.<op>.default once, with no Python autograd wrapper in the forward or the backward. The backward ops
// keep their (Python) autograd, which serves second derivatives (kernels/_ops/_double_backward.py).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <utility>

namespace kernels::autograd {

// The typed handle of kernels::<name> (looked up once per call site: `static const auto op = typed_op<...>(...)`).
template <class Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// A forward op's device kernel, below the autograd key (the Function records the graph itself).
template <class Signature, class... Args>
auto call_below_autograd(const c10::TypedOperatorHandle<Signature>& op, Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(std::forward<Args>(args)...);
}

// A backward op from a Function's backward. With grad mode on (backward(create_graph=True)) through the autograd key,
// so the backward op's own autograd records the second derivative; with it off (the usual backward) straight to the
// device kernel, at no cost beyond the dispatch.
template <class Signature, class... Args>
auto call_backward(const c10::TypedOperatorHandle<Signature>& op, Args&&... args) {
  if (at::GradMode::is_enabled()) {
    return op.call(std::forward<Args>(args)...);
  }
  return call_below_autograd(op, std::forward<Args>(args)...);
}

}  // namespace kernels::autograd
