// The attention forward kernels of head dim 32, fp16 and bf16 (attention_forward_kernel.cuh): one file per head dim so
// that a parallel build compiles them side by side.
#include "attention_forward_kernel.cuh"

namespace kernels {
template void launch_attention_forward_for<__half, 32>(const Params&, MaskKind, cudaStream_t);
template void launch_attention_forward_for<__nv_bfloat16, 32>(const Params&, MaskKind, cudaStream_t);
}  // namespace kernels
