// Attention over packed sequences on CUDA (kernels::varlen_attention_forward / _backward; schema in csrc/ops.cpp):
// q (Tq, H, D), k / v (Tk, Hkv, D), sequence i spanning rows cu_seqlens_q[i]:cu_seqlens_q[i + 1] of q and
// cu_seqlens_k[i]:cu_seqlens_k[i + 1] of k / v (int32, (N + 1,)), causal top-left within each sequence.
//
// The dense kernels of attention_forward.cu / attention_backward.cu do the work, flash-attn style: the grid covers
// (N * H, max_seqlen blocks); each CTA reads its sequence's row span (Sequence in attention_masks.cuh) and leaves
// at once when its block starts past the sequence's length. Only the Params differ:
// q / k / v rows come from the offsets (batch stride 0), out / grad_out / dq are (Tq, H, D) contiguous, dk / dv
// (Tk, Hkv, D), lse (H, Tq), and dropout counts (h*Tq + i)*Tk + j over global rows i, j (the dense counter with B = 1).
// max_seqlen_q / _k must bound the lengths and the offsets must be non-decreasing within the tensors: not checked
// (that would synchronise with the GPU), but a first pass clamps each sequence to the tensors and to max_seqlen
// (clamp_spans_kernel), so bad offsets give wrong results, never an access outside the tensors. Rows of q or k / v
// outside every sequence are not written (out, lse, dq, dk, dv), as in the Triton backend.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <kernels/checks.h>
#include <kernels/outputs.h>

#include "attention_arguments.cuh"

namespace kernels {
namespace {

// Checks the arguments every varlen call has (every message names the argument).
void check_varlen_arguments(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                            int64_t max_seqlen_k, double dropout_p) {
  check_attention_qkv(q, k, v, 3, {at::kHalf, at::kBFloat16});
  const int64_t heads = q.size(1), kv_heads = k.size(1);
  TORCH_CHECK_VALUE(k.size(2) == q.size(2), "argument `k` has head dim ", k.size(2), "; expected ", q.size(2),
                    " (the head dim of `q`)");
  check_head_dim(q.size(2));
  TORCH_CHECK_VALUE(kv_heads > 0 ? heads % kv_heads == 0 : heads == 0, "argument `k` has ", kv_heads,
                    " heads, which does not divide the ", heads, " heads of `q`");
  TORCH_CHECK_VALUE(q.size(0) < (1LL << 31) && k.size(0) < (1LL << 31),
                    "argument `q`/`k`: total lengths must be < 2^31 (int32 offsets)");
  const auto check_offsets = [&](const at::Tensor& cu, const char* name) {
    check_dtype(cu, name, {at::kInt});
    check_dim(cu, name, 1);
    check_same_device(cu, name, q, "q");
    TORCH_CHECK_VALUE(cu.size(0) >= 1, "argument `", name, "` has shape ", cu.sizes(),
                      "; expected (N + 1,) with N >= 0 sequences");
  };
  check_offsets(cu_seqlens_q, "cu_seqlens_q");
  check_offsets(cu_seqlens_k, "cu_seqlens_k");
  TORCH_CHECK_VALUE(cu_seqlens_k.size(0) == cu_seqlens_q.size(0), "argument `cu_seqlens_k` has ",
                    cu_seqlens_k.size(0), " entries; expected ", cu_seqlens_q.size(0), " like `cu_seqlens_q`");
  TORCH_CHECK_VALUE(max_seqlen_q >= 0 && max_seqlen_q < (1LL << 31),
                    "argument `max_seqlen_q` must be in [0, 2^31); got ", max_seqlen_q);
  TORCH_CHECK_VALUE(max_seqlen_k >= 0 && max_seqlen_k < (1LL << 31),
                    "argument `max_seqlen_k` must be in [0, 2^31); got ", max_seqlen_k);
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, "argument `dropout_p` must be in [0, 1); got ", dropout_p);
}

// Sequence i's rows [cu[i], cu[i + 1]) clamped into [0, total) and to at most `longest` rows: spans[i] = (start,
// end). The host never reads the offsets (that would synchronise with the GPU), so this is what keeps bad offsets or
// a too small max_seqlen from reaching outside the tensors: they give wrong results, not memory faults, and the
// forward and backward see the same sequences. A separate pass, so the attention kernels' registers do not grow.
__global__ void clamp_spans_kernel(const int* cu, int sequences, int total, int longest, int* spans) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= sequences) return;
  const int start = min(max(cu[i], 0), total);
  const int length = min(min(max(cu[i + 1], start), total) - start, longest);
  spans[2 * i] = start;
  spans[2 * i + 1] = start + length;
}

// (N, 2) int32 spans of the offsets cu (N + 1,), on the current stream.
at::Tensor clamped_spans(const at::Tensor& cu_in, int64_t total, int64_t longest) {
  const at::Tensor cu = cu_in.contiguous();
  const int64_t sequences = cu.size(0) - 1;
  at::Tensor spans = at::empty({sequences, 2}, cu.options());
  if (sequences == 0) return spans;
  constexpr int kThreadsPerBlock = 256;
  clamp_spans_kernel<<<(sequences + kThreadsPerBlock - 1) / kThreadsPerBlock, kThreadsPerBlock, 0,
                       c10::cuda::getCurrentCUDAStream()>>>(cu.const_data_ptr<int>(), static_cast<int>(sequences),
                                                            static_cast<int>(total), static_cast<int>(longest),
                                                            spans.mutable_data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return spans;
}

// Launch parameters of a packed problem (the caller adds the output pointers); the spans (clamped_spans) must stay
// alive until the kernels have run.
Params make_varlen_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& spans_q,
                          const at::Tensor& spans_k, int64_t max_seqlen_q, int64_t max_seqlen_k, bool is_causal,
                          double scale, double dropout_p, const std::optional<at::Tensor>& seed) {
  Params p{};
  const int64_t total_q = q.size(0), heads = q.size(1), total_k = k.size(0), kv_heads = k.size(1);
  p.q = q.const_data_ptr();
  p.k = k.const_data_ptr();
  p.v = v.const_data_ptr();
  p.spans_q = spans_q.const_data_ptr<int>();
  p.spans_k = spans_k.const_data_ptr<int>();
  // (batch, head, row) strides: no batch stride, the rows of sequence b start at its span's start.
  const int64_t q_stride[3] = {0, q.stride(1), q.stride(0)}, k_stride[3] = {0, k.stride(1), k.stride(0)},
                v_stride[3] = {0, v.stride(1), v.stride(0)};
  const int64_t o_stride[3] = {0, 1, heads}, dkv_stride[3] = {0, 1, kv_heads};  // (T, H, D) contiguous, in rows
  for (int i = 0; i < 3; ++i) {
    p.q_stride[i] = q_stride[i];
    p.k_stride[i] = k_stride[i];
    p.v_stride[i] = v_stride[i];
    p.o_stride[i] = o_stride[i];
    p.dkv_stride[i] = dkv_stride[i];
  }
  p.lse_stride[0] = 0;  // lse (H, Tq)
  p.lse_stride[1] = total_q;
  p.out_rows = total_q * heads;
  p.batch = static_cast<int>(spans_q.size(0));
  p.heads = static_cast<int>(heads);
  p.kv_heads = static_cast<int>(kv_heads);
  p.sq = static_cast<int>(total_q);
  p.sk = static_cast<int>(total_k);
  p.max_sq = static_cast<int>(max_seqlen_q);
  p.max_sk = static_cast<int>(max_seqlen_k);
  set_scalars(p, q, is_causal, scale, dropout_p, seed);
  return p;
}

std::tuple<at::Tensor, at::Tensor> varlen_attention_forward_cuda(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& cu_seqlens_q_in,
    const at::Tensor& cu_seqlens_k_in, int64_t max_seqlen_q, int64_t max_seqlen_k, bool is_causal, double scale,
    double dropout_p, const std::optional<at::Tensor>& seed) {
  check_varlen_arguments(q_in, k_in, v_in, cu_seqlens_q_in, cu_seqlens_k_in, max_seqlen_q, max_seqlen_k, dropout_p);
  const int64_t total_q = q_in.size(0), heads = q_in.size(1), dim = q_in.size(2);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = loadable(q_in), k = loadable(k_in), v = loadable(v_in);
  const at::Tensor spans_q = clamped_spans(cu_seqlens_q_in, q_in.size(0), max_seqlen_q);
  const at::Tensor spans_k = clamped_spans(cu_seqlens_k_in, k_in.size(0), max_seqlen_k);
  at::Tensor out = empty_output({total_q, heads, dim}, q.options());
  at::Tensor lse = empty_output({heads, total_q}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};

  Params p = make_varlen_params(q, k, v, spans_q, spans_k, max_seqlen_q, max_seqlen_k, is_causal, scale,
                                dropout_p, seed);
  p.out = out.mutable_data_ptr();
  p.lse = lse.mutable_data_ptr<float>();
  launch_attention_forward(p, MaskKind::kNone, q.scalar_type(), dim, c10::cuda::getCurrentCUDAStream());
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attention_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in, const at::Tensor& cu_seqlens_q_in,
    const at::Tensor& cu_seqlens_k_in, int64_t max_seqlen_q, int64_t max_seqlen_k, bool is_causal, double scale,
    double dropout_p, const std::optional<at::Tensor>& seed) {
  check_varlen_arguments(q_in, k_in, v_in, cu_seqlens_q_in, cu_seqlens_k_in, max_seqlen_q, max_seqlen_k, dropout_p);
  check_like_q(grad_out_in, "grad_out", q_in);
  check_like_q(out_in, "out", q_in);
  const int64_t total_q = q_in.size(0), heads = q_in.size(1), dim = q_in.size(2);
  const std::vector<int64_t> lse_shape{heads, total_q};
  TORCH_CHECK_VALUE(lse_in.scalar_type() == at::kFloat && lse_in.sizes() == at::IntArrayRef(lse_shape),
                    "argument `lse` has dtype ", lse_in.scalar_type(), " and shape ", lse_in.sizes(),
                    "; expected Float and ", at::IntArrayRef(lse_shape), " (H, Tq)");
  check_same_device(lse_in, "lse", q_in, "q");

  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = loadable(q_in), k = loadable(k_in), v = loadable(v_in);
  const at::Tensor spans_q = clamped_spans(cu_seqlens_q_in, q_in.size(0), max_seqlen_q);
  const at::Tensor spans_k = clamped_spans(cu_seqlens_k_in, k_in.size(0), max_seqlen_k);
  const at::Tensor grad_out = contiguous_aligned(grad_out_in), out = out_in.contiguous(), lse = lse_in.contiguous();
  at::Tensor dq = empty_output(q.sizes(), q.options());
  at::Tensor dk = empty_output(k.sizes(), k.options());
  at::Tensor dv = empty_output(v.sizes(), v.options());
  if (dq.numel() == 0 && dk.numel() == 0) return {dq, dk, dv};
  // One delta per row of out, in its (Tq, H) order.
  at::Tensor delta = at::empty({total_q, heads}, q.options().dtype(at::kFloat));

  Params p = make_varlen_params(q, k, v, spans_q, spans_k, max_seqlen_q, max_seqlen_k, is_causal, scale,
                                dropout_p, seed);
  set_backward_tensors(p, out, lse, grad_out, delta, dq, dk, dv);
  // A sequence with keys and no query gets zero dK / dV from the dK/dV kernel (it walks no query row).
  launch_attention_backward(p, MaskKind::kNone, q.scalar_type(), dim, c10::cuda::getCurrentCUDAStream());
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(kernels, CUDA, m) {
  m.impl("varlen_attention_forward", &varlen_attention_forward_cuda);
  m.impl("varlen_attention_backward", &varlen_attention_backward_cuda);
}

}  // namespace kernels
