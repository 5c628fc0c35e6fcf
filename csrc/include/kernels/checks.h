// Argument checks shared by every op. Each failure raises a Python ValueError whose message names the argument
// and says what was expected, so every backend reports a bad input in the same words.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <optional>
#include <sstream>
#include <string>

namespace kernels {

inline std::string dtype_list(std::initializer_list<at::ScalarType> allowed) {
  std::ostringstream out;
  bool first = true;
  for (auto t : allowed) {
    out << (first ? "" : ", ") << c10::toString(t);
    first = false;
  }
  return out.str();
}

inline void check_dtype(const at::Tensor& t, const char* name, std::initializer_list<at::ScalarType> allowed) {
  for (auto a : allowed) {
    if (t.scalar_type() == a) return;
  }
  TORCH_CHECK_VALUE(false, "argument `", name, "` has dtype ", t.scalar_type(), "; expected one of: ",
                    dtype_list(allowed));
}

inline void check_same_dtype(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_VALUE(t.scalar_type() == like.scalar_type(), "argument `", name, "` has dtype ", t.scalar_type(),
                    "; expected ", like.scalar_type(), " (the dtype of `", like_name, "`)");
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_VALUE(t.device() == like.device(), "argument `", name, "` is on ", t.device(), "; expected ",
                    like.device(), " (the device of `", like_name, "`)");
}

inline void check_same_shape(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_VALUE(t.sizes() == like.sizes(), "argument `", name, "` has shape ", t.sizes(), "; expected ",
                    like.sizes(), " (the shape of `", like_name, "`)");
}

inline void check_dim(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK_VALUE(t.dim() == dim, "argument `", name, "` must have ", dim, " dimensions, got shape ", t.sizes());
}

// q, k, v of an attention op: `dims` dimensions each (dense (B, H, S, D): 4; packed (T, H, D): 3), q's dtype one of
// `allowed`, k and v of q's dtype and device, v shaped like k. Sizes across q and k are the caller's to check.
inline void check_attention_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t dims,
                                std::initializer_list<at::ScalarType> allowed) {
  check_dtype(q, "q", allowed);
  check_dim(q, "q", dims);
  check_dim(k, "k", dims);
  check_dim(v, "v", dims);
  check_same_dtype(k, "k", q, "q");
  check_same_dtype(v, "v", q, "q");
  check_same_device(k, "k", q, "q");
  check_same_device(v, "v", q, "q");
  check_same_shape(v, "v", k, "k");
}

// The key_padding_mask of a dense attention op, when given: bool (B, Sk) on q's device (True = padding).
inline void check_key_padding_mask(const std::optional<at::Tensor>& key_padding_mask, const at::Tensor& q,
                                   int64_t batch, int64_t sk) {
  if (!key_padding_mask.has_value()) return;
  check_dim(*key_padding_mask, "key_padding_mask", 2);
  check_same_device(*key_padding_mask, "key_padding_mask", q, "q");
  check_dtype(*key_padding_mask, "key_padding_mask", {at::kBool});
  TORCH_CHECK_VALUE(key_padding_mask->size(0) == batch && key_padding_mask->size(1) == sk,
                    "argument `key_padding_mask` has shape ", key_padding_mask->sizes(), "; expected [", batch, ", ",
                    sk, "]");
}

// grad_out or out of an attention backward: q's shape, dtype and device.
inline void check_like_q(const at::Tensor& t, const char* name, const at::Tensor& q) {
  check_same_shape(t, name, q, "q");
  check_same_dtype(t, name, q, "q");
  check_same_device(t, name, q, "q");
}

// The Philox seed of an attention op with dropout: a one-element int64 tensor on the device of `like` (drawn from that
// device's generator by the caller, so that a captured CUDA graph draws a new seed on every replay and the kernels read
// it from memory, with no host sync). Required when dropout_p > 0, not read otherwise.
inline void check_dropout_seed(const std::optional<at::Tensor>& seed, double dropout_p, const at::Tensor& like,
                               const char* like_name) {
  if (!(dropout_p > 0.0)) return;
  TORCH_CHECK_VALUE(seed.has_value(), "argument `seed` is None; dropout_p = ", dropout_p, " needs a one-element int64 "
                    "seed tensor");
  TORCH_CHECK_VALUE(seed->numel() == 1 && seed->scalar_type() == at::kLong, "argument `seed` must be a one-element "
                    "int64 tensor, got dtype ", seed->scalar_type(), " and ", seed->numel(), " elements");
  check_same_device(*seed, "seed", like, like_name);
}

}  // namespace kernels
