// Shared by the CUDA attention kernels (attention_forward_kernel.cuh, attention_backward_kernels.cuh, instantiated
// per head dim in attention_forward_d*.cu and attention_backward_d*_*.cu) and their launchers (attention_forward.cu,
// attention_backward.cu, varlen_attention.cu): launch parameters, the per-head-dim tile sizes, PTX wrappers (cp.async,
// ldmatrix, mma.sync m16n8k16), the swizzled shared-memory tile layout, the mask logic and the kernel launch. Device
// code and c10 only (no ATen, which would cost each of the many instantiation files seconds of host compile time);
// the host-side argument checks are in attention_arguments.cuh. Layouts and semantics: csrc/cpu/attention.cpp and the
// schema comments in csrc/ops.cpp.
//
// Head dims 32, 64, 96, 128 and 256. Every kernel runs 4 warps; a warp owns 16 query rows (or 16 keys in the dK/dV
// kernel), so what varies with the head dim D is the other side of each tile, chosen in AttentionTiles<D> so that the
// fp32 accumulators (D / 2 registers per thread for O, dQ, dK or dV) plus the score tiles stay under the 255 registers
// a thread may hold at 128 threads per CTA, with no spills on sm_80 and sm_90 (csrc/compile_check.py reports it).
//
// Dense and packed (varlen) problems share the kernels: a CTA works on batch entry (or sequence) b and head h; with
// Params::spans_q/_k set, its rows are those of sequence b, found from its row spans (see Sequence in
// attention_masks.cuh), and the outputs are addressed through Params' row strides, so the dense path is the varlen
// path with one sequence per batch entry starting at row 0.
//
// The parts: attention_params.cuh (launch constants, tile sizes, Params, the launchers' declarations),
// attention_ptx.cuh (PTX wrappers, the swizzled shared-memory tiles), attention_masks.cuh (sequences, addressing,
// masks, dropout); this file includes them all and holds the host side of a launch.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <kernels/philox.h>

#include <cstdint>
#include <mutex>
#include <set>
#include <tuple>
#include <type_traits>

#include "attention_params.cuh"
#include "attention_ptx.cuh"
#include "attention_masks.cuh"

namespace kernels {
namespace {

// --- host side: launching ---------------------------------------------------------------------------------------------

// Calls f(std::integral_constant<int, D>{}) for a head dim that passed check_head_dim.
template <typename F>
void dispatch_head_dim(int64_t dim, const F& f) {
  switch (dim) {
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 96: return f(std::integral_constant<int, 96>{});
    case 128: return f(std::integral_constant<int, 128>{});
    case 256: return f(std::integral_constant<int, 256>{});
    default: TORCH_CHECK(false, "attention on CUDA: unsupported head dim ", dim);
  }
}

// Launches kernel<<<grid, kThreads, smem, stream>>>(p), first raising the kernel's dynamic shared memory limit to
// `smem` bytes; raises when the device cannot give a CTA that much (with the kernel's static shared memory). A grid
// with no CTA (varlen: no sequence, or max_seqlen 0) launches nothing.
// The attribute queries and the limit raise run once per (kernel, device, size): each costs a runtime call, and a
// backward launches four or five kernels, which shows at decode sizes.
template <typename Kernel>
void launch_attention_kernel(Kernel kernel, dim3 grid, int smem, int64_t head_dim, const Params& p,
                             cudaStream_t stream) {
  if (grid.x == 0 || grid.y == 0) return;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  {
    static std::mutex mutex;
    static std::set<std::tuple<const void*, int, int>> prepared;  // (kernel, device, dynamic shared memory bytes)
    const std::lock_guard<std::mutex> lock(mutex);
    const auto key = std::make_tuple(reinterpret_cast<const void*>(kernel), device, smem);
    if (prepared.count(key) == 0) {
      int optin = 0;
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
      cudaFuncAttributes attributes{};
      C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
      const int64_t needed = smem + static_cast<int64_t>(attributes.sharedSizeBytes);
      TORCH_CHECK(needed <= optin, "attention on CUDA: head dim ", head_dim, " needs ", needed,
                  " bytes of shared memory per block; this device allows ", optin);
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      prepared.insert(key);
    }
  }
  kernel<<<grid, kThreads, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Grids put (batch x heads) on x (up to 2^31 - 1 CTAs) and the row blocks on y, whose limit is 65535 blocks of
// `block` rows (64; 32 in the forward at D = 256): longer sequences are refused with the argument named.
inline void check_row_blocks(int64_t rows, const char* name, int64_t block = kBlockM) {
  TORCH_CHECK_VALUE((rows + block - 1) / block <= 65535, "argument `", name, "` has ", rows,
                    " rows per sequence; the CUDA kernel supports up to ", 65535 * block, " at this head dim");
}

}  // namespace
}  // namespace kernels
