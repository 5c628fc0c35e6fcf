// residual_add on the CPU: out = x + residual, computed in fp32 (fp64 for fp64) and written in the input dtype.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <kernels/checks.h>
#include <kernels/outputs.h>

namespace kernels {
namespace {

at::Tensor residual_add_cpu(const at::Tensor& x, const at::Tensor& residual) {
  check_dtype(x, "x", {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf});
  check_same_dtype(residual, "residual", x, "x");
  check_same_device(residual, "residual", x, "x");
  check_same_shape(residual, "residual", x, "x");
  const at::Tensor a = x.contiguous();
  const at::Tensor b = residual.contiguous();
  at::Tensor out = empty_output_like(a);
  const int64_t n = a.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.scalar_type(), "residual_add_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    scalar_t* po = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        po[i] = static_cast<scalar_t>(static_cast<acc_t>(pa[i]) + static_cast<acc_t>(pb[i]));
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kernels, CPU, m) { m.impl("residual_add", &residual_add_cpu); }

}  // namespace kernels
