// kernels._C.fast: the common calls of kernels.scaled_dot_product_attention, attention_with_kv_cache and
// varlen_attention on the CPU (csrc/include/kernels/fast_calls.h says what and why).
//
// The native backend's limits (kernels/_ops/attention_native.py `unsupported`) are checked here for the CPU: head
// dims 1..256, v's head dim equal to q's, an attn_mask that does not require grad; on CUDA they depend on the GPU, so
// CUDA calls take the Python path. Dropout, torch's CausalBias masks and causal decoding of several queries take it
// too.
#include <kernels/autograd.h>

#include "fast_common.h"

#include <array>

namespace kernels::fast {
namespace {

using Pair = std::tuple<at::Tensor, at::Tensor>;
constexpr int64_t kMaxHeadDim = 256;

// q, k, v with the native CPU kernels' layout: `dims` dimensions, heads at `head_axis` (k's heads dividing q's), one
// dtype, the CPU, and a head dim in 1..256 shared by all three; v shaped like k.
bool native_cpu_qkv(FastOp op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t dims,
                    int64_t head_axis) {
  if (q.dim() != dims || k.dim() != dims || v.dim() != dims || !q.is_cpu() || !served(op, q)) return false;
  const int64_t head_dim = q.size(-1), heads = q.size(head_axis), kv_heads = k.size(head_axis);
  if (head_dim < 1 || head_dim > kMaxHeadDim || k.size(-1) != head_dim || v.size(-1) != head_dim) return false;
  if (kv_heads == 0 || heads % kv_heads != 0) return false;
  for (int64_t axis = 0; axis < dims - 1; ++axis) {
    if (v.size(axis) != k.size(axis)) return false;
  }
  return k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type() && k.is_cpu() && v.is_cpu();
}

at::Tensor dense_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Optional& mask,
                         const Optional& padding, bool is_causal, double scale) {
  static const auto forward = autograd::typed_op<Pair(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                      const Optional&, const Optional&, bool, double, double,
                                                      const Optional&)>("kernels::attention_forward");
  return std::get<0>(forward.call(q, k, v, mask, padding, is_causal, scale, 0.0, std::nullopt));
}

// An attn_mask the native CPU kernel serves as the Python path passes it: bool (True = take part) or q's dtype (added
// to the scores), on the CPU, not requiring grad, broadcastable to (B, H, Sq, Sk) by its trailing dims, as a view of
// that shape (stride 0 where it broadcasts). False for any other mask (which the Python path checks or refuses).
bool broadcast_mask(const at::Tensor& q, int64_t keys, Optional& mask) {
  if (!mask) return true;
  const at::Tensor& m = *mask;
  if (!m.is_cpu() || m.requires_grad() || m.dim() > 4 ||
      (m.scalar_type() != at::kBool && m.scalar_type() != q.scalar_type())) {
    return false;
  }
  const std::array<int64_t, 4> full = {q.size(0), q.size(1), q.size(2), keys};
  for (int64_t axis = 0; axis < m.dim(); ++axis) {
    const int64_t size = m.size(axis), wanted = full[4 - m.dim() + axis];
    if (size != wanted && size != 1) return false;
  }
  if (m.sizes() != c10::IntArrayRef(full)) mask = m.expand(full);
  return true;
}

// kernels.scaled_dot_product_attention(q, k, v, attn_mask, 0.0, is_causal, scale, enable_gqa, key_padding_mask=...)
// with (B, H, S, D) tensors; None for any other call.
py::object attention(py::handle q_obj, py::handle k_obj, py::handle v_obj, py::handle mask_obj,
                     py::handle dropout_obj, py::handle causal_obj, py::handle scale_obj, py::handle gqa_obj,
                     py::handle padding_obj) {
  const at::Tensor *q = plain_tensor(q_obj), *k = plain_tensor(k_obj), *v = plain_tensor(v_obj);
  const std::optional<bool> is_causal = exact_bool(causal_obj), enable_gqa = exact_bool(gqa_obj);
  Optional mask, padding;
  if (q == nullptr || k == nullptr || v == nullptr || !optional_tensor(mask_obj, mask) || !no_dropout(dropout_obj) ||
      !is_causal || !enable_gqa || !optional_tensor(padding_obj, padding) ||
      !native_cpu_qkv(kAttention, *q, *k, *v, 4, 1) || k->size(0) != q->size(0) ||
      !broadcast_mask(*q, k->size(2), mask)) {
    return py::none();
  }
  if (k->size(1) != q->size(1) && !*enable_gqa) return py::none();
  if (padding && !(padding->scalar_type() == at::kBool && padding->dim() == 2 && padding->size(0) == q->size(0) &&
                   padding->size(1) == k->size(2) && padding->is_cpu())) {
    return py::none();
  }
  const std::optional<double> scale = attention_scale(scale_obj, q->size(3));
  if (!scale) return py::none();
  at::Tensor out;
  {
    py::gil_scoped_release no_gil;
    out = dense_forward(*q, *k, *v, mask, padding, *is_causal, *scale);
  }
  return py::cast(out);
}

// kernels.attention_with_kv_cache(q, k_cache, v_cache, cache_seqlens=..., is_causal=..., scale=...) when every query
// sees every valid slot (one query, or is_causal=False): the slots at or past cache_seqlens[b] are padding, as the
// Python path's native call; None for any other call.
py::object attention_with_kv_cache(py::handle q_obj, py::handle k_obj, py::handle v_obj, py::handle seqlens_obj,
                                   py::handle causal_obj, py::handle scale_obj) {
  const at::Tensor *q = plain_tensor(q_obj), *k = plain_tensor(k_obj), *v = plain_tensor(v_obj);
  const std::optional<bool> is_causal = exact_bool(causal_obj);
  Optional seqlens;
  if (q == nullptr || k == nullptr || v == nullptr || !is_causal || !optional_tensor(seqlens_obj, seqlens) ||
      !native_cpu_qkv(kAttentionWithKvCache, *q, *k, *v, 4, 1) || k->size(0) != q->size(0) ||
      (*is_causal && q->size(2) > 1)) {
    return py::none();
  }
  if (seqlens && !((seqlens->scalar_type() == at::kInt || seqlens->scalar_type() == at::kLong) &&
                   seqlens->dim() == 1 && seqlens->size(0) == q->size(0) && seqlens->is_cpu())) {
    return py::none();
  }
  const std::optional<double> scale = attention_scale(scale_obj, q->size(3));
  if (!scale) return py::none();
  at::Tensor out;
  {
    py::gil_scoped_release no_gil;
    Optional padding;
    if (seqlens) {  // (B, Smax), True = padding
      padding = at::arange(k->size(2), seqlens->options().dtype(at::kLong)) >= seqlens->contiguous().unsqueeze(1);
    }
    out = dense_forward(*q, *k, *v, std::nullopt, padding, false, *scale);
  }
  return py::cast(out);
}

// A cu_seqlens argument: a plain 1-D int32/int64 tensor on the CPU with at least one entry.
bool cpu_offsets(const Optional& cu) {
  return cu && cu->dim() == 1 && cu->numel() >= 1 && cu->is_cpu() &&
         (cu->scalar_type() == at::kInt || cu->scalar_type() == at::kLong);
}

// kernels.varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, is_causal=...,
// scale=..., dropout_p=0) with (total, H, D) tensors; None for any other call.
py::object varlen_attention(py::handle q_obj, py::handle k_obj, py::handle v_obj, py::handle cu_q_obj,
                            py::handle cu_k_obj, py::handle max_q_obj, py::handle max_k_obj, py::handle causal_obj,
                            py::handle scale_obj, py::handle dropout_obj) {
  const at::Tensor *q = plain_tensor(q_obj), *k = plain_tensor(k_obj), *v = plain_tensor(v_obj);
  const std::optional<bool> is_causal = exact_bool(causal_obj);
  const std::optional<int64_t> max_q = non_negative_int(max_q_obj), max_k = non_negative_int(max_k_obj);
  Optional cu_q, cu_k;
  if (q == nullptr || k == nullptr || v == nullptr || !is_causal || !max_q || !max_k || !no_dropout(dropout_obj) ||
      !optional_tensor(cu_q_obj, cu_q) || !optional_tensor(cu_k_obj, cu_k) || !cpu_offsets(cu_q) ||
      !cpu_offsets(cu_k) || cu_q->numel() != cu_k->numel() || !native_cpu_qkv(kVarlenAttention, *q, *k, *v, 3, 1)) {
    return py::none();
  }
  const std::optional<double> scale = attention_scale(scale_obj, q->size(2));
  if (!scale) return py::none();
  at::Tensor out;
  {
    py::gil_scoped_release no_gil;
    static const auto forward = autograd::typed_op<Pair(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        const at::Tensor&, const at::Tensor&, int64_t, int64_t, bool,
                                                        double, double, const Optional&)>(
        "kernels::varlen_attention_forward");
    // The kernels read int32 offsets.
    const at::Tensor offsets_q = cu_q->scalar_type() == at::kInt ? *cu_q : cu_q->to(at::kInt);
    const at::Tensor offsets_k = cu_k->scalar_type() == at::kInt ? *cu_k : cu_k->to(at::kInt);
    out = std::get<0>(forward.call(*q, *k, *v, offsets_q, offsets_k, *max_q, *max_k, *is_causal, *scale, 0.0,
                                   std::nullopt));
  }
  return py::cast(out);
}

}  // namespace

void define_attention_fast_calls(py::module& module) {
  module.def("attention", &attention, "kernels.scaled_dot_product_attention's common CPU call, or None");
  module.def("attention_with_kv_cache", &attention_with_kv_cache,
             "kernels.attention_with_kv_cache's common CPU call, or None");
  module.def("varlen_attention", &varlen_attention, "kernels.varlen_attention's common CPU call, or None");
}

}  // namespace kernels::fast
