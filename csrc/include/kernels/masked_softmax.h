// masked_softmax: what the CPU and the CUDA kernels share. The argument checks (so both devices raise the same
// errors, naming the argument) and the strided view of a broadcast mask.
//
// Layout: x is made contiguous and seen as rows of Sk elements; row r is (lead..., q) with q = r % Sq. The mask is
// never expanded in memory: `mask.expand(x.sizes())` is a view whose broadcast dimensions have stride 0, and the
// mask element of (row r, column j) is at  sum_d lead_d(r) * stride_d  +  q * stride_q  +  j * stride_k.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <kernels/checks.h>

namespace kernels {
namespace masked_softmax {

// The C++ kernels index the mask with at most this many dimensions of x (6 leading + Sq + Sk).
constexpr int kMaxDims = 8;

enum class MaskKind { kNone, kBool, kAdditive };

// The mask's strides over x's shape, leading dimensions first (innermost last). Trivially copyable: passed by value
// to CUDA kernels.
struct MaskIndexer {
  int lead_dims = 0;
  int64_t lead_sizes[kMaxDims - 2] = {};
  int64_t lead_strides[kMaxDims - 2] = {};
  int64_t sq = 1;
  int64_t stride_q = 0;
  int64_t stride_k = 0;

  // Offset (in elements) of the mask row that goes with row `row` of x.
#ifdef __CUDACC__
  __host__ __device__
#endif
  inline int64_t row_offset(int64_t row) const {
    int64_t offset = (row % sq) * stride_q;
    int64_t rest = row / sq;
    // A loop of fixed length: the arrays are indexed by constants, so on a GPU they stay in registers (a runtime
    // index would copy the struct to local memory).
#ifdef __CUDACC__
#pragma unroll
#endif
    for (int d = kMaxDims - 3; d >= 0; --d) {
      if (d < lead_dims) {
        offset += (rest % lead_sizes[d]) * lead_strides[d];
        rest /= lead_sizes[d];
      }
    }
    return offset;
  }
};

inline void check_forward(const at::Tensor& x, const c10::optional<at::Tensor>& mask, bool is_causal) {
  TORCH_CHECK_VALUE(at::isFloatingType(x.scalar_type()), "argument `x` has dtype ", x.scalar_type(),
                    "; expected a floating dtype");
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.dim() <= kMaxDims, "argument `x` has ", x.dim(),
                    " dimensions; expected 1 to ", kMaxDims);
  TORCH_CHECK_VALUE(!is_causal || x.dim() >= 2, "argument `is_causal` needs `x` with at least 2 dimensions (Sq, Sk); "
                    "got shape ", x.sizes());
  if (!mask.has_value()) return;
  const at::Tensor& m = *mask;
  TORCH_CHECK_VALUE(m.scalar_type() == at::kBool || m.scalar_type() == x.scalar_type(), "argument `mask` has dtype ",
                    m.scalar_type(), "; expected Bool (True = keep) or ", x.scalar_type(),
                    " (additive, the dtype of `x`)");
  check_same_device(m, "mask", x, "x");
  bool broadcastable = m.dim() <= x.dim();
  for (int64_t i = 1; broadcastable && i <= m.dim(); ++i) {
    const int64_t size = m.size(-i);
    broadcastable = size == 1 || size == x.size(-i);
  }
  TORCH_CHECK_VALUE(broadcastable, "argument `mask` has shape ", m.sizes(),
                    ", which does not broadcast to the shape of `x` ", x.sizes());
}

inline void check_backward(const at::Tensor& grad, const at::Tensor& y) {
  check_same_dtype(grad, "grad", y, "y");
  check_same_device(grad, "grad", y, "y");
  check_same_shape(grad, "grad", y, "y");
  TORCH_CHECK_VALUE(y.dim() >= 1, "argument `y` must have at least 1 dimension, got a scalar");
}

inline MaskKind mask_kind(const c10::optional<at::Tensor>& mask) {
  if (!mask.has_value()) return MaskKind::kNone;
  return mask->scalar_type() == at::kBool ? MaskKind::kBool : MaskKind::kAdditive;
}

// The indexer of `mask` broadcast over `shape` (x's shape); dimensions of size 1 are dropped from the leading ones.
inline MaskIndexer mask_indexer(const c10::optional<at::Tensor>& mask, at::IntArrayRef shape) {
  MaskIndexer indexer;
  const int64_t dims = static_cast<int64_t>(shape.size());
  indexer.sq = dims >= 2 ? shape[dims - 2] : 1;
  if (!mask.has_value()) return indexer;
  const at::Tensor view = mask->expand(shape);  // stride 0 on broadcast dimensions, nothing copied
  indexer.stride_k = view.stride(dims - 1);
  if (dims >= 2) indexer.stride_q = view.stride(dims - 2);
  for (int64_t d = 0; d + 2 < dims; ++d) {
    if (shape[d] == 1) continue;
    indexer.lead_sizes[indexer.lead_dims] = shape[d];
    indexer.lead_strides[indexer.lead_dims] = view.stride(d);
    ++indexer.lead_dims;
  }
  return indexer;
}

}  // namespace masked_softmax
}  // namespace kernels
