"""kernels.residual_add on every backend available here (native CPU kernel; Triton under the interpreter)."""

import pytest
import torch

import kernels
from kernels.testing import available_devices, backends_for, check_against_reference

BACKENDS = ["torch"] + backends_for("residual_add", "cpu")


def _add(x, residual):
    return x + residual


@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1,), (17, 127), (3, 5, 1000)])
def test_matches_reference(device, backend, dtype, shape):
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    residual = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    check_against_reference(lambda a, b: kernels.residual_add(a, b, backend=backend), _add, x, residual)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_empty(backend):
    base = torch.randn(64, 130, dtype=torch.float32)
    x, residual = base[:, ::2], base.t()[::2, :64].t()  # strided views
    assert not x.is_contiguous() and not residual.is_contiguous()
    check_against_reference(lambda a, b: kernels.residual_add(a, b, backend=backend), _add, x, residual,
                            backward=False)
    empty = torch.empty(0, 8)
    assert kernels.residual_add(empty, empty, backend=backend).shape == (0, 8)


def test_native_fp64_and_bf16_on_cpu():
    for dtype in (torch.float64, torch.bfloat16):
        x, residual = torch.randn(33, 65, dtype=dtype), torch.randn(33, 65, dtype=dtype)
        check_against_reference(lambda a, b: kernels.residual_add(a, b, backend="native"), _add, x, residual)


def test_negative_control_wrong_kernel_fails():
    x, residual = torch.randn(8, 8), torch.randn(8, 8)
    with pytest.raises(AssertionError):
        check_against_reference(lambda a, b: kernels.residual_add(a, a, backend="native"), _add, x, residual)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_name_the_argument(backend):
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="`residual` has shape"):
        kernels.residual_add(x, torch.randn(4, 9), backend=backend)
    with pytest.raises(ValueError, match="`residual` has dtype"):
        kernels.residual_add(x, torch.randn(4, 8, dtype=torch.float64), backend=backend)
    with pytest.raises(TypeError, match="`x` must be a tensor"):
        kernels.residual_add([1.0], x, backend=backend)


def test_native_op_checks_arguments_itself():
    with pytest.raises(ValueError, match="argument `residual` has shape"):
        torch.ops.kernels.residual_add(torch.randn(4, 8), torch.randn(8, 4))
    with pytest.raises(ValueError, match="argument `x` has dtype Int"):
        torch.ops.kernels.residual_add(torch.ones(4, dtype=torch.int32), torch.ones(4, dtype=torch.int32))


@pytest.mark.parametrize("op", ["residual_add", "triton_residual_add"])
def test_opcheck(op):
    if op.startswith("triton") and "triton" not in BACKENDS:
        pytest.skip("the Triton backend is not usable on this machine")
    x = torch.randn(5, 7, requires_grad=True)
    residual = torch.randn(5, 7, requires_grad=True)
    torch.library.opcheck(getattr(torch.ops.kernels, op), (x, residual))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    compiled = torch.compile(lambda a, b: kernels.residual_add(a, b, backend=backend) * 2, backend="aot_eager",
                             fullgraph=True)
    x, residual = torch.randn(6, 10), torch.randn(6, 10)
    torch.testing.assert_close(compiled(x, residual), (x + residual) * 2)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["native", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_matches_reference_at_size(backend, dtype):
    x = torch.randn(4097, 1531, device="cuda", dtype=dtype, requires_grad=True)
    residual = torch.randn_like(x, requires_grad=True)
    check_against_reference(lambda a, b: kernels.residual_add(a, b, backend=backend), _add, x, residual)
    misaligned = torch.randn(4097 * 1531 + 1, device="cuda", dtype=dtype)[1:].view(4097, 1531)
    check_against_reference(lambda a, b: kernels.residual_add(a, b, backend=backend), _add, misaligned,
                            residual.detach(), backward=False)


@pytest.mark.gpu
def test_cuda_extension_was_built_with_cuda():
    assert kernels._extension._C is not None and kernels._extension._C.with_cuda, kernels.extension_status()
