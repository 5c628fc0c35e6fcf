// Host-side argument checks and launch parameters of the CUDA attention ops (attention_forward.cu,
// attention_backward.cu, varlen_attention.cu): every message names the argument. The device side is in
// attention_common.cuh.
#pragma once

#include <ATen/ATen.h>

#include <kernels/checks.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "attention_common.cuh"

namespace kernels {
namespace {

// The tensor itself when its head dim (the last) is contiguous and its rows are 16-byte aligned (cp.async), else a
// contiguous copy.
inline at::Tensor loadable(const at::Tensor& x) {
  bool ok = x.stride(-1) == 1 && reinterpret_cast<uintptr_t>(x.const_data_ptr()) % 16 == 0;
  for (int64_t i = 0; i + 1 < x.dim(); ++i) ok = ok && x.stride(i) % 8 == 0;
  return ok ? x : x.clone(at::MemoryFormat::Contiguous);  // a fresh allocation: contiguous() keeps a misaligned view
}

// x contiguous and 16-byte aligned (grad_out is read with 16-byte copies in out's contiguous layout); a copy otherwise.
inline at::Tensor contiguous_aligned(const at::Tensor& x) {
  const bool ok = x.is_contiguous() && reinterpret_cast<uintptr_t>(x.const_data_ptr()) % 16 == 0;
  return ok ? x : x.clone(at::MemoryFormat::Contiguous);
}

inline void check_head_dim(int64_t dim) {
  TORCH_CHECK_VALUE(dim == 32 || dim == 64 || dim == 96 || dim == 128 || dim == 256, "argument `q` has head dim ", dim,
                    "; the CUDA kernel supports head dims 32, 64, 96, 128 and 256");
}

// The tensors of a backward call: out, lse and grad_out (read), delta (scratch), dq, dk and dv (written).
inline void set_backward_tensors(Params& p, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& grad_out,
                                 at::Tensor& delta, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  p.out = const_cast<void*>(out.const_data_ptr());
  p.lse = const_cast<float*>(lse.const_data_ptr<float>());
  p.grad_out = grad_out.const_data_ptr();
  p.delta = delta.mutable_data_ptr<float>();
  p.dq = dq.mutable_data_ptr();
  p.dk = dk.mutable_data_ptr();
  p.dv = dv.mutable_data_ptr();
}

// Checks q, k, v and the masks of a dense call (every message names the argument); returns the kind of `mask`.
inline MaskKind check_attention_arguments(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                          const std::optional<at::Tensor>& mask,
                                          const std::optional<at::Tensor>& key_padding_mask, double dropout_p) {
  check_attention_qkv(q, k, v, 4, {at::kHalf, at::kBFloat16});
  const int64_t batch = q.size(0), heads = q.size(1), sq = q.size(2), dim = q.size(3);
  const int64_t kv_heads = k.size(1), sk = k.size(2);
  TORCH_CHECK_VALUE(k.size(0) == batch, "argument `k` has batch ", k.size(0), "; expected ", batch,
                    " (the batch of `q`)");
  TORCH_CHECK_VALUE(k.size(3) == dim, "argument `k` has head dim ", k.size(3), "; expected ", dim,
                    " (the head dim of `q`)");
  check_head_dim(dim);
  TORCH_CHECK_VALUE(kv_heads > 0 ? heads % kv_heads == 0 : heads == 0, "argument `k` has ", kv_heads,
                    " heads, which does not divide the ", heads, " heads of `q`");
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, "argument `dropout_p` must be in [0, 1); got ", dropout_p);
  TORCH_CHECK_VALUE(sq < (1LL << 31) && sk < (1LL << 31), "argument `q`/`k`: sequence lengths must be < 2^31");
  MaskKind kind = MaskKind::kNone;
  if (mask.has_value()) {
    check_dim(*mask, "mask", 4);
    check_same_device(*mask, "mask", q, "q");
    TORCH_CHECK_VALUE(mask->scalar_type() == at::kBool || mask->scalar_type() == q.scalar_type(),
                      "argument `mask` has dtype ", mask->scalar_type(), "; expected bool or ", q.scalar_type(),
                      " (the dtype of `q`)");
    const std::vector<int64_t> expected{batch, heads, sq, sk};
    TORCH_CHECK_VALUE(mask->sizes() == at::IntArrayRef(expected), "argument `mask` has shape ", mask->sizes(),
                      "; expected ", at::IntArrayRef(expected), " (a broadcast view; stride 0 where broadcast)");
    kind = mask->scalar_type() == at::kBool ? MaskKind::kBool : MaskKind::kAdditive;
  }
  check_key_padding_mask(key_padding_mask, q, batch, sk);
  return kind;
}

// The scalars every problem has.
inline void set_scalars(Params& p, const at::Tensor& q, bool is_causal, double scale, double dropout_p,
                        const std::optional<at::Tensor>& seed) {
  check_dropout_seed(seed, dropout_p, q, "q");
  p.scale_log2 = static_cast<float>(scale) * kLog2e;
  p.dropout_p = static_cast<float>(dropout_p);
  p.keep_scale = static_cast<float>(1.0 / (1.0 - dropout_p));
  p.seed = dropout_p > 0.0 ? seed->const_data_ptr<int64_t>() : nullptr;
  p.causal = is_causal;
}

// Launch parameters of a dense problem, q (B, H, Sq, D), k / v (B, Hkv, Sk, D), with out, grad_out and dq
// contiguous (B, H, Sq, D), dk / dv contiguous (B, Hkv, Sk, D) and lse (B, H, Sq) (the caller adds the pointers).
inline Params make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& key_padding_mask,
                          bool is_causal, double scale, double dropout_p,
                          const std::optional<at::Tensor>& seed) {
  Params p{};
  const int64_t batch = q.size(0), heads = q.size(1), sq = q.size(2), kv_heads = k.size(1), sk = k.size(2);
  p.q = q.const_data_ptr();
  p.k = k.const_data_ptr();
  p.v = v.const_data_ptr();
  for (int i = 0; i < 3; ++i) {
    p.q_stride[i] = q.stride(i);
    p.k_stride[i] = k.stride(i);
    p.v_stride[i] = v.stride(i);
  }
  const int64_t o_stride[3] = {heads * sq, sq, 1}, dkv_stride[3] = {kv_heads * sk, sk, 1};
  for (int i = 0; i < 3; ++i) {
    p.o_stride[i] = o_stride[i];
    p.dkv_stride[i] = dkv_stride[i];
  }
  p.lse_stride[0] = heads * sq;
  p.lse_stride[1] = sq;
  if (mask.has_value()) {
    p.mask = mask->const_data_ptr();
    for (int i = 0; i < 4; ++i) p.mask_stride[i] = mask->stride(i);
    // Keys (2j, 2j + 1) in one load: contiguous keys, even strides (but where the size is 1, only index 0 is
    // read), and the base aligned to two entries.
    bool pairs = mask->stride(3) == 1 && reinterpret_cast<uintptr_t>(p.mask) % (2 * mask->element_size()) == 0;
    for (int i = 0; i < 3; ++i) pairs = pairs && (mask->size(i) == 1 || mask->stride(i) % 2 == 0);
    p.mask_pairs = pairs;
  }
  if (key_padding_mask.has_value()) {
    p.padding = key_padding_mask->const_data_ptr<bool>();
    p.padding_stride[0] = key_padding_mask->stride(0);
    p.padding_stride[1] = key_padding_mask->stride(1);
  }
  p.out_rows = batch * heads * sq;
  p.batch = static_cast<int>(batch);
  p.heads = static_cast<int>(heads);
  p.kv_heads = static_cast<int>(kv_heads);
  p.sq = p.max_sq = static_cast<int>(sq);
  p.sk = p.max_sk = static_cast<int>(sk);
  set_scalars(p, q, is_causal, scale, dropout_p, seed);
  return p;
}

}  // namespace
}  // namespace kernels
