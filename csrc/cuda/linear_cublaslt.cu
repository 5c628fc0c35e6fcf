// linear_forward / linear_act_backward through cuBLASLt, for the cases its epilogues fuse (csrc/cuda/linear.cu falls
// back to at::addmm + its own epilogue kernels for everything else):
//
//   forward   activation None       epilogue DEFAULT or BIAS; with a residual (and no dropout): C = residual, beta = 1
//             activation relu       RELU or RELU_BIAS (only without save_pre: the contract keeps the pre-activation
//                                   itself, and RELU_AUX writes a bit-mask instead)
//             activation gelu_tanh  GELU or GELU_BIAS; GELU_AUX(_BIAS) when save_pre (the aux output is the
//                                   pre-activation in the output dtype, as the generic path's `pre`)
//   backward  activation gelu_tanh  DGELU_BGRAD on grad @ weight with the saved pre-activation as aux: grad_pre and
//                                   the bias gradient in one GEMM
//   weight gradient with a bias     BGRADB on grad.T @ x: the bias gradient (grad's column sums) in the same GEMM
// cuBLASLt's GELU is the tanh approximation; erf GELU, SiLU, the gated activations and dropout are not fused here.
//
// Layouts. Torch tensors are row-major; cuBLASLt is column-major: a contiguous row-major (R, C) tensor is the
// column-major C x R matrix with leading dimension C (operands are made contiguous first). So out = x @ weight.T, (M, N) row-major, is
// computed as its transpose out^T (N x M, ld N) = weight (K x N col-major, ld K; transposed) * x^T (K x M, ld K):
// m = N, n = M, k = K. The bias then runs along D's rows (length N, cuBLASLt's bias convention), and the aux matrix
// (N x M, ld N) is the row-major (M, N) pre-activation. Backward: grad_pre^T (N x M, ld N) = weight^T * grad^T, with
// weight (d_out, N) row-major = the column-major N x d_out matrix (ld N, not transposed) and grad (M, d_out) row-major
// = d_out x M (ld d_out, not transposed): m = N, n = M, k = d_out; the bias gradient sums D over its columns (M),
// i.e. grad_pre's column sums in the row-major view. Weight gradient: grad_w (N, K) row-major is the column-major
// K x N matrix = x^T (x (M, K) = K x M, ld K, not transposed) * grad (grad (M, N) = N x M, ld N, transposed): m = K,
// n = N, k = M; BGRADB sums op(B) = grad over k, one value per column of D: grad's column sums.
//
// Fallback rule (checked before anything is written): every leading dimension (K, N, and d_out in the backward) a
// multiple of 8 elements (the aux matrix requires ld % 8 == 0; we apply it to all operands so that each row starts
// 16-byte aligned for every dtype), every pointer 16-byte aligned, no empty dimension. cuBLASLt also answers "no
// algorithm" for some combinations (e.g. an epilogue it does not offer for fp32): also a fallback.
//
// Handle and workspace: one cuBLASLt handle per device (lazily, under a lock); the workspace (up to 32 MiB, what the
// heuristic asks for) is taken per call from torch's caching allocator on the current stream, which keeps it
// stream-ordered (a single per-device buffer would be raced by GEMMs on two streams) and costs a free-list hit.
//
// Numerics: fp16/bf16 in, fp32 compute (CUBLAS_COMPUTE_32F) and fp32 scale; split-K partial sums are never reduced in
// the 16-bit output type (reduction scheme mask). fp32 uses TF32 (CUBLAS_COMPUTE_32F_FAST_TF32) when
// torch.backends.cuda.matmul.allow_tf32 is set, as torch's own matmul. The bias gradient (BGRADB, DGELU_BGRAD) is
// asked for in fp32 (CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE): cuBLASLt's default, D's dtype, would round the column sums
// to fp16/bf16 and overflow past 65504 in fp16 under loss scaling. Where cuBLASLt offers no algorithm with an fp32
// bias gradient, the GEMM runs with the epilogue minus its BGRAD part and the column sums are taken in fp32 by at::sum.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <cublasLt.h>

#include <kernels/linear_cublaslt.h>
#include <kernels/outputs.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

namespace kernels {
namespace {

#define KERNELS_CUBLASLT_CHECK(EXPR)                                                                  \
  do {                                                                                                \
    const cublasStatus_t kernels_cublaslt_status = (EXPR);                                            \
    TORCH_CHECK(kernels_cublaslt_status == CUBLAS_STATUS_SUCCESS, "cuBLASLt: ", #EXPR, " failed: ",   \
                cublasLtGetStatusString(kernels_cublaslt_status), " (status ",                        \
                static_cast<int>(kernels_cublaslt_status), ")");                                      \
  } while (0)

std::atomic<int64_t> matmul_calls{0};

// One cuBLASLt handle per device, created on first use under a lock and kept for the life of the process (destroying
// it at exit could run after the CUDA runtime is torn down). A handle may be shared by threads: every call passes its
// own stream and workspace.
cublasLtHandle_t handle_for(c10::DeviceIndex device) {
  static std::mutex mutex;
  static std::vector<cublasLtHandle_t> handles;
  const std::lock_guard<std::mutex> lock(mutex);
  if (handles.empty()) handles.assign(static_cast<size_t>(c10::cuda::device_count()), nullptr);
  TORCH_CHECK(device >= 0 && static_cast<size_t>(device) < handles.size(), "cuBLASLt: bad device index ", device);
  if (handles[device] == nullptr) KERNELS_CUBLASLT_CHECK(cublasLtCreate(&handles[device]));
  return handles[device];
}

// Owns one cuBLASLt descriptor; destroyed on scope exit (also when a check throws).
template <typename Handle, cublasStatus_t (*destroy)(Handle)>
class Owned {
 public:
  Owned() = default;
  Owned(const Owned&) = delete;
  Owned& operator=(const Owned&) = delete;
  ~Owned() {
    if (handle_ != nullptr) destroy(handle_);  // a status from a destructor has nowhere to go
  }
  Handle* out() { return &handle_; }
  Handle get() const { return handle_; }

 private:
  Handle handle_ = nullptr;
};
using MatmulDesc = Owned<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy>;
using Layout = Owned<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy>;
using Preference = Owned<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy>;

template <typename T>
void set_attribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attribute, const T& value) {
  KERNELS_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(desc, attribute, &value, sizeof(value)));
}

template <typename T>
void set_attribute(cublasLtMatmulPreference_t preference, cublasLtMatmulPreferenceAttributes_t attribute,
                   const T& value) {
  KERNELS_CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, attribute, &value, sizeof(value)));
}

// A column-major matrix as cuBLASLt stores it: element (r, c) at ptr[r + c * ld].
struct Matrix {
  const void* ptr;
  uint64_t rows;
  uint64_t cols;
  int64_t ld;
};

// The contiguous row-major 2-D tensor `t` (R, C) seen as a column-major matrix: its transpose, C x R with ld C.
// (Not t.stride(0): a contiguous tensor with one row may carry any stride there.)
Matrix column_major(const at::Tensor& t) {
  return {t.const_data_ptr(), static_cast<uint64_t>(t.size(1)), static_cast<uint64_t>(t.size(0)), t.size(1)};
}

// D (m x n, ld ldd) = epilogue(op(A) op(B) + beta C) with beta = 1 when `c` is set (C has D's layout), else 0.
struct Gemm {
  at::ScalarType dtype;
  cublasOperation_t trans_a;
  cublasOperation_t trans_b;
  Matrix a;
  Matrix b;
  const void* c;
  void* d;
  uint64_t m, n;
  int64_t ldd;
  cublasLtEpilogue_t epilogue;
  const void* bias;  // the bias (length m) in the forward, the bias-gradient output in the backward, or nullptr
  void* aux;         // the pre-activation, m x n with ld aux_ld (GELU_AUX* output, DGELU_BGRAD input), or nullptr
  int64_t aux_ld;
  int32_t bias_type = -1;  // CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE (a cudaDataType_t); -1: D's dtype
};

cudaDataType_t cuda_type(at::ScalarType dtype) {
  switch (dtype) {
    case at::kHalf:
      return CUDA_R_16F;
    case at::kBFloat16:
      return CUDA_R_16BF;
    default:
      TORCH_CHECK(dtype == at::kFloat, "cuBLASLt path: unsupported dtype ", dtype);
      return CUDA_R_32F;
  }
}

// The largest power of two (<= 256, cuBLASLt's default assumption) dividing the address: lets the heuristic pick
// only algorithms that can read the operand.
uint32_t alignment(const void* ptr) {
  const auto address = reinterpret_cast<uintptr_t>(ptr);
  uint32_t bytes = 256;
  while (bytes > 1 && address % bytes != 0) bytes /= 2;
  return bytes;
}

// Runs one GEMM on the current stream of `device`; false (nothing launched) when cuBLASLt offers no algorithm.
bool run(const Gemm& g, c10::DeviceIndex device) {
  const cudaDataType_t type = cuda_type(g.dtype);
  const bool tf32 = g.dtype == at::kFloat && at::globalContext().allowTF32CuBLAS();
  MatmulDesc desc;
  KERNELS_CUBLASLT_CHECK(
      cublasLtMatmulDescCreate(desc.out(), tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUDA_R_32F));
  set_attribute(desc.get(), CUBLASLT_MATMUL_DESC_TRANSA, g.trans_a);
  set_attribute(desc.get(), CUBLASLT_MATMUL_DESC_TRANSB, g.trans_b);
  set_attribute(desc.get(), CUBLASLT_MATMUL_DESC_EPILOGUE, g.epilogue);
  // The heuristic reads these pointers' values (not their data) for their alignment: set them before asking it.
  if (g.bias != nullptr) set_attribute(desc.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
  if (g.bias != nullptr && g.bias_type >= 0) {
    set_attribute(desc.get(), CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, g.bias_type);
  }
  if (g.aux != nullptr) {
    set_attribute(desc.get(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, g.aux);
    set_attribute(desc.get(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, g.aux_ld);
  }

  Layout a_layout, b_layout, d_layout;  // C shares D's layout
  KERNELS_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(a_layout.out(), type, g.a.rows, g.a.cols, g.a.ld));
  KERNELS_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(b_layout.out(), type, g.b.rows, g.b.cols, g.b.ld));
  KERNELS_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(d_layout.out(), type, g.m, g.n, g.ldd));

  const void* c = g.c != nullptr ? g.c : g.d;  // beta = 0: C is not read
  Preference preference;
  KERNELS_CUBLASLT_CHECK(cublasLtMatmulPreferenceCreate(preference.out()));
  const uint64_t max_workspace = 32u << 20;  // 32 MiB: what Hopper's largest kernels ask for
  set_attribute(preference.get(), CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, max_workspace);
  if (g.dtype != at::kFloat) {
    const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_MASK & ~CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE;
    set_attribute(preference.get(), CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, schemes);
  }
  set_attribute(preference.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignment(g.a.ptr));
  set_attribute(preference.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignment(g.b.ptr));
  set_attribute(preference.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignment(c));
  set_attribute(preference.get(), CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignment(g.d));

  const cublasLtHandle_t handle = handle_for(device);
  cublasLtMatmulHeuristicResult_t heuristic = {};
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle, desc.get(), a_layout.get(), b_layout.get(),
                                                               d_layout.get(), d_layout.get(), preference.get(), 1,
                                                               &heuristic, &found);
  if (status != CUBLAS_STATUS_SUCCESS || found == 0) {
    // No algorithm (NOT_SUPPORTED, e.g. an epilogue this dtype lacks) or a configuration cuBLASLt rejects: the
    // generic path serves the call. Anything but NOT_SUPPORTED is worth a word (tests also count the GEMMs taken).
    if (status != CUBLAS_STATUS_SUCCESS && status != CUBLAS_STATUS_NOT_SUPPORTED) {
      TORCH_WARN_ONCE("cuBLASLt heuristic failed (", cublasLtGetStatusString(status), "); using at::addmm instead");
    }
    return false;
  }

  // The workspace: per call, from the caching allocator on the current stream (see the top of the file).
  const at::Tensor workspace =
      at::empty({static_cast<int64_t>(heuristic.workspaceSize)},
                at::TensorOptions().dtype(at::kByte).device(at::Device(at::kCUDA, device)));
  const float alpha = 1.0f, beta = g.c != nullptr ? 1.0f : 0.0f;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device).stream();
  KERNELS_CUBLASLT_CHECK(cublasLtMatmul(handle, desc.get(), &alpha, g.a.ptr, a_layout.get(), g.b.ptr, b_layout.get(),
                                        &beta, c, d_layout.get(), g.d, d_layout.get(), &heuristic.algo,
                                        heuristic.workspaceSize > 0 ? workspace.mutable_data_ptr() : nullptr,
                                        heuristic.workspaceSize, stream));
  matmul_calls.fetch_add(1, std::memory_order_relaxed);
  return true;
}

bool aligned(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0; }

bool fits(int64_t dim) { return dim > 0 && dim % 8 == 0; }

}  // namespace

bool cublaslt_linear_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const ActivationSpec& spec, bool dropout, const at::Tensor& residual, bool save_pre,
                             at::Tensor& out, at::Tensor& pre) {
  const Activation act = spec.activation;
  if (spec.gated || dropout) return false;
  if (act != Activation::kNone && act != Activation::kRelu && act != Activation::kGeluTanh) return false;
  if (residual.defined() && act != Activation::kNone) return false;  // C is added before the activation
  if (save_pre && act != Activation::kGeluTanh) return false;         // only GELU_AUX returns the pre-activation
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  if (M <= 0 || !fits(K) || !fits(N)) return false;
  const at::Tensor x_c = x.contiguous(), w_c = weight.contiguous();  // (M, K), (N, K)
  const at::Tensor b_c = bias.has_value() ? bias->contiguous() : at::Tensor();
  if (!aligned(x_c) || !aligned(w_c) || (b_c.defined() && !aligned(b_c)) ||
      (residual.defined() && !aligned(residual))) {
    return false;
  }

  const auto options = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor result = empty_output({M, N}, options);
  at::Tensor pre_activation = empty_output({save_pre ? M : 0, N}, options);
  const bool has_bias = b_c.defined();
  cublasLtEpilogue_t epilogue = has_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  if (act == Activation::kRelu) {
    epilogue = has_bias ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_RELU;
  } else if (act == Activation::kGeluTanh && save_pre) {
    epilogue = has_bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
  } else if (act == Activation::kGeluTanh) {
    epilogue = has_bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
  }
  // out^T (N x M, ld N) = weight (stored K x N, ld K, transposed) * x^T (K x M, ld K) [+ residual^T (N x M, ld N)].
  const Gemm gemm{x.scalar_type(),
                  CUBLAS_OP_T,
                  CUBLAS_OP_N,
                  column_major(w_c),
                  column_major(x_c),
                  residual.defined() ? residual.const_data_ptr() : nullptr,
                  result.mutable_data_ptr(),
                  static_cast<uint64_t>(N),
                  static_cast<uint64_t>(M),
                  N,
                  epilogue,
                  has_bias ? b_c.const_data_ptr() : nullptr,
                  save_pre ? pre_activation.mutable_data_ptr() : nullptr,
                  N};
  if (!run(gemm, x.device().index())) return false;
  out = result;
  pre = pre_activation;
  return true;
}

bool cublaslt_linear_act_backward(const at::Tensor& grad, const std::optional<at::Tensor>& weight,
                                  const at::Tensor& pre, const ActivationSpec& spec, bool dropout, at::Tensor& grad_pre,
                                  at::Tensor& grad_bias) {
  // Without a weight there is no GEMM to fuse into; other activations have no cuBLASLt gradient epilogue that takes
  // the pre-activation (DRELU_BGRAD reads RELU_AUX's bit-mask).
  if (spec.gated || dropout || spec.activation != Activation::kGeluTanh || !weight.has_value()) return false;
  if (grad.dim() != 2 || weight->dim() != 2 || pre.dim() != 2) return false;  // the generic path reports it
  const int64_t M = pre.size(0), N = pre.size(1), d_out = grad.size(1);
  if (grad.size(0) != M || weight->size(0) != d_out || weight->size(1) != N) return false;
  if (weight->scalar_type() != pre.scalar_type() || weight->device() != pre.device()) return false;
  if (M <= 0 || !fits(N) || !fits(d_out)) return false;
  const at::Tensor grad_c = grad.contiguous(), w_c = weight->contiguous(), pre_c = pre.contiguous();
  if (!aligned(grad_c) || !aligned(w_c) || !aligned(pre_c)) return false;

  const auto options = pre.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor result = empty_output({M, N}, options);
  at::Tensor bias_grad = empty_output({N}, options.dtype(at::kFloat));
  // grad_pre^T (N x M, ld N) = dgelu(pre^T) * (weight^T (stored N x d_out, ld N) * grad^T (d_out x M, ld d_out)).
  Gemm gemm{pre.scalar_type(),
                  CUBLAS_OP_N,
                  CUBLAS_OP_N,
                  column_major(w_c),
                  column_major(grad_c),
                  nullptr,
                  result.mutable_data_ptr(),
                  static_cast<uint64_t>(N),
                  static_cast<uint64_t>(M),
                  N,
                  CUBLASLT_EPILOGUE_DGELU_BGRAD,
                  bias_grad.mutable_data_ptr(),
                  const_cast<void*>(pre_c.const_data_ptr()),  // read only: DGELU_BGRAD's aux is an input
                  N,
                  CUDA_R_32F};
  if (!run(gemm, pre.device().index())) {
    // No fp32 bias gradient on offer: DGELU alone, then grad_pre's column sums in fp32 (see the top of the file).
    gemm.epilogue = CUBLASLT_EPILOGUE_DGELU;
    gemm.bias = nullptr;
    if (!run(gemm, pre.device().index())) return false;
    bias_grad = at::sum(result, {0}, /*keepdim=*/false, at::kFloat);
  }
  grad_pre = result;
  grad_bias = bias_grad;
  return true;
}

bool cublaslt_linear_weight_grad(const at::Tensor& grad, const at::Tensor& x, at::Tensor& grad_weight,
                                 at::Tensor& grad_bias) {
  const at::ScalarType dtype = x.scalar_type();
  if (dtype != at::kHalf && dtype != at::kBFloat16 && dtype != at::kFloat) return false;  // e.g. fp64: at::mm
  const int64_t M = grad.size(0), N = grad.size(1), K = x.size(1);
  if (M <= 0 || !fits(N) || !fits(K)) return false;  // M is the reduction: any length
  const at::Tensor grad_c = grad.contiguous(), x_c = x.contiguous();  // (M, N), (M, K)
  if (!aligned(grad_c) || !aligned(x_c)) return false;

  const auto options = x.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor result = empty_output({N, K}, options);
  at::Tensor bias_grad = empty_output({N}, options.dtype(at::kFloat));
  // grad_w^T (K x N, ld K) = x^T (stored K x M, ld K) * grad (stored N x M, ld N; transposed); bias gradient: BGRADB.
  Gemm gemm{x.scalar_type(),
                  CUBLAS_OP_N,
                  CUBLAS_OP_T,
                  column_major(x_c),
                  column_major(grad_c),
                  nullptr,
                  result.mutable_data_ptr(),
                  static_cast<uint64_t>(K),
                  static_cast<uint64_t>(N),
                  K,
                  CUBLASLT_EPILOGUE_BGRADB,
                  bias_grad.mutable_data_ptr(),
                  nullptr,
                  0,
                  CUDA_R_32F};
  if (!run(gemm, x.device().index())) {
    // No fp32 bias gradient on offer: the plain GEMM, then grad's column sums in fp32 (see the top of the file).
    gemm.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    gemm.bias = nullptr;
    if (!run(gemm, x.device().index())) return false;
    bias_grad = at::sum(grad_c, {0}, /*keepdim=*/false, at::kFloat);
  }
  grad_weight = result;
  grad_bias = bias_grad;
  return true;
}

int64_t cublaslt_calls() { return matmul_calls.load(std::memory_order_relaxed); }

}  // namespace kernels
