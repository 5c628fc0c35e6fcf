// The attention backward kernels of head dim 256, bf16 (attention_backward_kernels.cuh): one file per dtype and
// head dim so that a parallel build compiles them side by side.
#include "attention_backward_kernels.cuh"

namespace kernels {
template void launch_attention_backward_for<__nv_bfloat16, 256>(const Params&, MaskKind, cudaStream_t);
}  // namespace kernels
