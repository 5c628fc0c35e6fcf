// The attention backward kernels of head dim 64, fp16 (attention_backward_kernels.cuh): one file per dtype and
// head dim so that a parallel build compiles them side by side.
#include "attention_backward_kernels.cuh"

namespace kernels {
template void launch_attention_backward_for<__half, 64>(const Params&, MaskKind, cudaStream_t);
}  // namespace kernels
