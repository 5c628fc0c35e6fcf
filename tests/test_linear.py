"""kernels.linear: a GEMM with a fused bias and activation, on every backend of this machine (triton under the
interpreter, native C++ on CPU; plus CUDA in the gpu tier), against kernels.reference.linear."""

import os
import subprocess
import sys

import pytest
import torch

import kernels
from kernels import reference
from kernels.testing import assert_close, available_devices, backends_for, check_against_reference

ACTIVATIONS = (None,) + reference.ACTIVATIONS
DTYPES_BY_BACKEND = {"torch": (torch.float32,), "native": (torch.float32, torch.float64, torch.bfloat16),
                     "triton": (torch.float32, torch.float16)}


def _backends(device="cpu"):
    return ["torch"] + backends_for("linear", device)


def _inputs(rows, d_in, d_out, activation, dtype=torch.float32, device="cpu", bias=True):
    """x (rows, d_in), weight (d_out or 2 d_out, d_in) scaled like nn.Linear's init, bias; all requiring grad."""
    width = 2 * d_out if activation in reference.GATED_ACTIVATIONS else d_out
    x = torch.randn(rows, d_in, device=device).to(dtype).requires_grad_()
    weight = (torch.randn(width, d_in, device=device) / max(d_in, 1) ** 0.5).to(dtype).requires_grad_()
    b = torch.randn(width, device=device).to(dtype).requires_grad_() if bias else None
    return x, weight, b


def _run(backend):
    def run(x, weight, bias=None, *, activation=None):
        return kernels.linear(x, weight, bias, activation=activation, backend=backend)
    return run


@pytest.mark.interpret
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_each_activation_matches_reference(backend, activation):
    x, weight, bias = _inputs(7, 65, 33, activation)
    check_against_reference(_run(backend), reference.linear, x, weight, bias, activation=activation)


@pytest.mark.interpret
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("rows, d_in, d_out", [(1, 1, 1), (7, 129, 65), (33, 17, 1)])
def test_odd_sizes(backend, rows, d_in, d_out):
    x, weight, bias = _inputs(rows, d_in, d_out, "gelu")
    check_against_reference(_run(backend), reference.linear, x, weight, bias, activation="gelu")


@pytest.mark.parametrize("backend", _backends())
def test_leading_dimensions_and_no_bias(backend):
    x = torch.randn(2, 3, 24, requires_grad=True)
    weight = (torch.randn(40, 24) / 5).requires_grad_()
    check_against_reference(_run(backend), reference.linear, x, weight, None, activation="swiglu")


@pytest.mark.parametrize("backend", backends_for("linear", "cpu"))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes(backend, dtype):
    if dtype not in DTYPES_BY_BACKEND[backend]:
        pytest.skip(f"backend {backend} does not serve {dtype} on cpu")
    x, weight, bias = _inputs(9, 40, 24, "silu", dtype=dtype)
    check_against_reference(_run(backend), reference.linear, x, weight, bias, activation="silu")


@pytest.mark.parametrize("backend", _backends())
def test_non_contiguous_inputs(backend):
    x = torch.randn(16, 10).t().requires_grad_()  # (10, 16) with strides (1, 10)
    weight = (torch.randn(20, 32) / 4)[:, ::2].requires_grad_()  # (20, 16), column stride 2
    bias = torch.randn(40)[::2].requires_grad_()
    assert not x.is_contiguous() and not weight.is_contiguous() and not bias.is_contiguous()
    check_against_reference(_run(backend), reference.linear, x, weight, bias, activation="gelu_tanh")


@pytest.mark.parametrize("backend", _backends())
def test_empty_input(backend):
    x, weight, bias = _inputs(0, 8, 6, "relu")
    out = kernels.linear(x, weight, bias, activation="relu", backend=backend)
    assert out.shape == (0, 6)
    out.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))


@pytest.mark.parametrize("backend", _backends())
def test_large_magnitudes_stay_finite(backend):
    x = torch.randn(5, 16) * 100
    weight = torch.randn(12, 16) * 10
    for activation in ("gelu", "gelu_tanh", "silu"):
        out = kernels.linear(x, weight, None, activation=activation, backend=backend)
        assert torch.isfinite(out).all()
        assert_close(out, reference.linear(x.double(), weight.double(), None, activation=activation),
                     rtol=1e-5, atol=1e-3)


@pytest.mark.interpret
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("activation", reference.GATED_ACTIVATIONS)
def test_separate_gate_and_up_projections(backend, activation):
    # Hugging Face's gate_proj / up_proj held apart: a (gate, up) pair, compared with the packed [gate; up] reference.
    x, weight, bias = _inputs(9, 33, 17, activation)
    w_gate, w_up = (w.detach().clone().requires_grad_() for w in weight.chunk(2))
    b_gate, b_up = (b.detach().clone().requires_grad_() for b in bias.chunk(2))

    def run(x, w_gate, w_up, b_gate, b_up, *, activation):
        return kernels.linear(x, (w_gate, w_up), (b_gate, b_up), activation=activation, backend=backend)

    def ref(x, w_gate, w_up, b_gate, b_up, *, activation):
        return reference.linear(x, torch.cat([w_gate, w_up]), torch.cat([b_gate, b_up]), activation=activation)

    check_against_reference(run, ref, x, w_gate, w_up, b_gate, b_up, activation=activation)


@pytest.mark.parametrize("backend", _backends())
def test_conv1d_weight_as_transposed_view(backend):
    # GPT-2's Conv1D holds (in, out); passed as .t() it is read through its strides, its gradient reaches (in, out).
    x = torch.randn(2, 5, 24, requires_grad=True)
    conv_weight = (torch.randn(24, 40) / 5).requires_grad_()
    bias = torch.randn(40, requires_grad=True)

    def run(x, conv_weight, bias, *, activation):
        return kernels.linear(x, conv_weight.t(), bias, activation=activation, backend=backend)

    def ref(x, conv_weight, bias, *, activation):
        return reference.linear(x, conv_weight.t(), bias, activation=activation)

    check_against_reference(run, ref, x, conv_weight, bias, activation="gelu_tanh")


@pytest.mark.skipif("native" not in backends_for("linear", "cpu"), reason="kernels._C not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_cpu_linear_without_activation_is_f_linear(dtype):
    """On the CPU the native backend runs a Linear without activation as F.linear (the same at::addmm, a quarter of
    the host time): bitwise the same output and gradients, any leading shape and weight view."""
    x = torch.randn(2, 3, 24).to(dtype).requires_grad_()
    conv_weight = (torch.randn(24, 40) / 5).to(dtype).requires_grad_()  # GPT-2 Conv1D layout, passed as .t()
    bias = torch.randn(40).to(dtype).requires_grad_()
    out = kernels.linear(x, conv_weight.t(), bias, backend="native")
    expected = torch.nn.functional.linear(x, conv_weight.t(), bias)
    assert torch.equal(out, expected)
    grad = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, (x, conv_weight, bias), grad),
                         torch.autograd.grad(expected, (x, conv_weight, bias), grad)):
        assert torch.equal(got, want)
    with torch.no_grad():  # an activation still takes the native GEMM + epilogue (not F.linear, not another backend)
        gelu = kernels.linear(x, conv_weight.t(), bias, activation="gelu", backend="native")
    assert "kernels::linear_forward" in _ops_called(
        lambda: kernels.linear(x, conv_weight.t(), bias, activation="gelu", backend="native"))
    assert_close(gelu, reference.linear(x.double(), conv_weight.t().double(), bias.double(), activation="gelu"),
                 torch_out=reference.linear(x, conv_weight.t(), bias, activation="gelu"))


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("rows, d_out", [(1, 512), (64, 64), (65, 64)])  # GELU of 512, 4096 and 4160 elements
def test_gelu_on_both_sides_of_the_small_size_path(backend, rows, d_out):
    """Native CPU: a lone GELU of <= 4096 elements runs in the epilogue loop, above in at::gelu_out; both match."""
    x, weight, bias = _inputs(rows, 16, d_out, "gelu")
    check_against_reference(_run(backend), reference.linear, x, weight, bias, activation="gelu")
    with torch.no_grad():
        check_against_reference(_run(backend), reference.linear, x, weight, bias, activation="gelu")


def test_bad_inputs():
    x, weight, bias = _inputs(4, 8, 6, None)
    with pytest.raises(TypeError, match="`x`"):
        kernels.linear(x.tolist(), weight)
    with pytest.raises(ValueError, match="`weight` has shape"):
        kernels.linear(x, weight.t())
    with pytest.raises(ValueError, match="`bias` has shape"):
        kernels.linear(x, weight, bias[:5])
    with pytest.raises(ValueError, match="`weight` has dtype"):
        kernels.linear(x, weight.double())
    with pytest.raises(ValueError, match="`activation` must be one of"):
        kernels.linear(x, weight, activation="tanh")
    with pytest.raises(ValueError, match="even number"):
        kernels.linear(x, weight[:5], activation="swiglu")
    with pytest.raises(ValueError, match="`backend`"):
        kernels.linear(x, weight, backend="cuda")
    with pytest.raises(ValueError, match="`weight` is a \\(gate, up\\) pair"):
        kernels.linear(x, (weight, weight), activation="silu")
    with pytest.raises(ValueError, match="`weight\\[gate\\]` has shape"):
        kernels.linear(x, (weight.t(), weight.t()), activation="swiglu")


def test_negative_control_wrong_gelu_fails_the_checker():
    # erf GELU computed as tanh GELU: close (~1e-3) but not within the fp32 table, so the checker must reject it.
    x, weight, bias = _inputs(7, 65, 33, "gelu")

    def wrong(x, weight, bias=None, *, activation=None):
        return kernels.linear(x, weight, bias, activation="gelu_tanh", backend=_backends()[-1])

    with pytest.raises(AssertionError):
        check_against_reference(wrong, reference.linear, x, weight, bias, activation="gelu")


@pytest.mark.parametrize("backend", backends_for("linear", "cpu"))
def test_opcheck_composite_op(backend):
    op = getattr(torch.ops.kernels, f"{backend}_linear")
    for activation in ("geglu", None):
        x, weight, bias = _inputs(3, 4, 5, activation)
        torch.library.opcheck(op, (x, weight, bias, activation, True))


@pytest.mark.skipif("native" not in backends_for("linear", "cpu"), reason="kernels._C lacks the linear ops")
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck_fp64_native(activation):
    x, weight, bias = _inputs(3, 5, 4, activation, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *a: kernels.linear(*a, activation=activation, backend="native"),
                                    (x, weight, bias))


def _ops_called(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        fn()
    return {event.name for event in profile.events()}


@pytest.mark.parametrize("backend", backends_for("linear", "cpu"))
def test_eager_calls_skip_the_composite_ops_dispatch(backend):
    """Eager calls run the composite ops' implementations (no gradient) or their autograd as an autograd.Function
    (with one): no custom-op dispatch either way (torch.compile traces the registered ops: the compile tests). Both
    give the registered op's results and gradients."""
    x, weight, bias = _inputs(6, 16, 8, "gelu")
    with torch.no_grad():
        names = _ops_called(lambda: kernels.linear(x, weight, bias, activation="gelu", backend=backend))
        ffn = _ops_called(lambda: kernels.feed_forward(x, weight, bias, weight.t(), None, backend=backend))
        expected = kernels.linear(x, weight, bias, activation="gelu", backend=backend)
    assert f"kernels::{backend}_linear" not in names and f"kernels::{backend}_feed_forward" not in ffn
    names = _ops_called(lambda: kernels.linear(x, weight, bias, activation="gelu", backend=backend))
    assert f"kernels::{backend}_linear" not in names
    out = kernels.linear(x, weight, bias, activation="gelu", backend=backend)
    assert_close(out.detach(), expected.double())
    registered = getattr(torch.ops.kernels, f"{backend}_linear")(x, weight, bias, "gelu", True)[0]
    for got, want in zip(torch.autograd.grad(out.sum(), (x, weight, bias)),
                         torch.autograd.grad(registered.sum(), (x, weight, bias))):
        assert torch.equal(got, want)


@pytest.mark.parametrize("backend", backends_for("linear", "cpu"))
def test_torch_compile_fullgraph(backend):
    x, weight, bias = _inputs(6, 16, 8, "geglu")
    compiled = torch.compile(lambda *a: kernels.linear(*a, activation="geglu", backend=backend), fullgraph=True,
                             backend="aot_eager")
    check_against_reference(lambda x, w, b, activation=None: compiled(x, w, b), reference.linear, x, weight, bias,
                            activation="geglu")


# ----------------------------------------------------------------------------------------------------------------------
# GPU tier
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("backend", backends_for("linear", "cuda") if "cuda" in available_devices() else [])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("rows, d_in, d_out", [(1, 1, 1), (7, 129, 65), (1000, 768, 3072)])
def test_gpu_matches_reference(backend, dtype, activation, rows, d_in, d_out):
    x, weight, bias = _inputs(rows, d_in, d_out, activation, dtype=dtype, device="cuda")
    check_against_reference(_run(backend), reference.linear, x, weight, bias, activation=activation)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", backends_for("linear", "cuda") if "cuda" in available_devices() else [])
def test_gpu_fp32_tf32_off(backend):
    x, weight, bias = _inputs(257, 300, 130, "gelu", device="cuda")
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        check_against_reference(_run(backend), reference.linear, x, weight, bias, activation="gelu",
                                atol=1e-4, rtol=1e-4, grad_atol=1e-3, grad_rtol=1e-4)  # GPU fp32 vs fp32 reference
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


@pytest.mark.gpu
@pytest.mark.parametrize("backend", backends_for("linear", "cuda") if "cuda" in available_devices() else [])
def test_gpu_deterministic(backend):
    x, weight, bias = _inputs(1024, 512, 1024, "swiglu", dtype=torch.bfloat16, device="cuda")
    first = kernels.linear(x, weight, bias, activation="swiglu", backend=backend)
    grad = torch.randn_like(first)
    first_grads = torch.autograd.grad(first, (x, weight, bias), grad)
    for _ in range(50):
        out = kernels.linear(x, weight, bias, activation="swiglu", backend=backend)
        assert torch.equal(out, first)
        for g, g0 in zip(torch.autograd.grad(out, (x, weight, bias), grad), first_grads):
            assert torch.equal(g, g0)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", backends_for("linear", "cuda") if "cuda" in available_devices() else [])
def test_gpu_torch_compile_inductor(backend):
    x, weight, bias = _inputs(256, 128, 256, "gelu", dtype=torch.bfloat16, device="cuda")
    compiled = torch.compile(lambda *a: kernels.linear(*a, activation="gelu", backend=backend), fullgraph=True)
    check_against_reference(lambda x, w, b, activation=None: compiled(x, w, b), reference.linear, x, weight, bias,
                            activation="gelu")


# ----------------------------------------------------------------------------------------------------------------------
# The Triton kernels' configurations: autotuning keyed on a bucket of M, candidates pruned per call, one config at will
# ----------------------------------------------------------------------------------------------------------------------

def _triton_linear():
    pytest.importorskip("triton")
    from kernels.triton import linear as launcher
    return launcher


@pytest.mark.parametrize("m, bucket", [(0, 1), (1, 1), (3, 4), (64, 64), (65, 128), (1000, 1024), (8192, 8192),
                                       (100_000, 8192)])
def test_m_bucket(m, bucket):
    assert _triton_linear().m_bucket(m) == bucket


def test_autotuner_keys_on_the_m_bucket_not_m():
    launcher = _triton_linear()
    for kernel, reset in ((launcher._linear_forward_kernel, None),
                          (launcher._linear_act_backward_kernel, ["bias_partial_ptr"])):
        tuned = launcher._autotuned(kernel, reset)
        assert "M" not in tuned.keys, "every new token count would re-benchmark every candidate"
        assert {"M_BUCKET", "N", "K", "PRECISION", "ACTIVATION", "GATED"} <= set(tuned.keys)
        assert tuned.early_config_prune is launcher._prune


def test_launchers_pass_the_m_bucket(monkeypatch):
    """Two row counts in one bucket give the autotuner the same key (its other entries do not depend on M)."""
    launcher = _triton_linear()
    interpreter = pytest.importorskip("triton.runtime.interpreter")
    if not launcher.interpreting():
        pytest.skip("reads the interpreter's launches")
    seen = []
    run = interpreter.InterpretedFunction.run

    def recording_run(self, *args, **kwargs):
        named = dict(zip(self.fn.__code__.co_varnames, args))
        seen.append((named["M"], named["M_BUCKET"]))
        return run(self, *args, **kwargs)

    monkeypatch.setattr(interpreter.InterpretedFunction, "run", recording_run)
    seed = torch.zeros(1, dtype=torch.int64)
    for rows in (33, 50):
        out, pre = launcher.linear_forward(torch.randn(rows, 8), torch.randn(4, 8), None, "relu", 0.0, seed, None, True)
        launcher.linear_act_backward(torch.randn_like(out), None, pre, "relu", 0.0, seed)
    assert seen == [(33, 64), (33, 64), (50, 64), (50, 64)]


def _prune(dtype, precision, m_bucket, gated=False):
    launcher = _triton_linear()
    configs = launcher.TENSOR_CORE_CONFIGS + launcher.FP32_IEEE_CONFIGS
    pruned = launcher._prune(configs, {"x_ptr": torch.empty(0, dtype=dtype), "M_BUCKET": m_bucket},
                             PRECISION=precision, GATED=gated)
    return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_stages, c.num_warps) for c in pruned]


def test_fp32_without_tf32_gets_fma_tiles():
    """input_precision="ieee" dots run on the FMA units: no 8-warp 128 x 256 tiles, at most 64 fp32 accumulators
    per thread (128 for the gated kernels' two), BLOCK_K 32."""
    launcher = _triton_linear()
    tiles = _prune(torch.float32, "ieee", 8192)
    assert tiles and set(tiles) <= {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_stages,
                                     c.num_warps) for c in launcher.FP32_IEEE_CONFIGS}
    assert all(m * n // (32 * w) <= 64 and k == 32 for m, n, k, _, w in tiles)
    assert (128, 256, 64, 3, 8) in _prune(torch.bfloat16, "ieee", 8192)  # 16-bit inputs keep the tensor-core tiles
    assert (128, 256, 64, 3, 8) not in _prune(torch.float32, "tf32", 8192)  # 3 x 96 KB of fp32 stages: over sm_90's


def test_prune_small_m_gated_and_never_empty():
    assert max(m for m, *_ in _prune(torch.float16, "ieee", 16)) == 64  # 16 rows: no 128- or 256-row tiles
    assert max(m for m, *_ in _prune(torch.float16, "ieee", 1024)) == 256
    assert all(m * n <= 128 * 128 for m, n, *_ in _prune(torch.bfloat16, "ieee", 4096, gated=True))
    assert len(_prune(torch.float32, "ieee", 1)) >= 1


def test_one_config_replaces_autotuning(monkeypatch):
    launcher = _triton_linear()
    monkeypatch.setattr(launcher, "interpreting", lambda: False)
    monkeypatch.setenv("KERNELS_TRITON_ONE_CONFIG", "1")
    kernel, config = launcher._kernel(launcher._linear_forward_kernel)
    assert kernel is launcher._linear_forward_kernel and config == launcher.ONE_CONFIG
    # The one config is valid for every family: FMA-sized (fp32 IEEE, gated too) and within shared memory.
    m, n, k = config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_K"]
    assert 2 * m * n // (32 * config["num_warps"]) <= 128
    assert config["num_stages"] * (m + n) * k * 4 <= launcher.SMEM_BYTES
    monkeypatch.delenv("KERNELS_TRITON_ONE_CONFIG")
    assert launcher._kernel(launcher._linear_forward_kernel)[1] == {}


@pytest.mark.gpu
@pytest.mark.skipif("triton" not in backends_for("linear", "cuda") if "cuda" in available_devices() else True,
                    reason="no CUDA device or no Triton")
def test_gpu_new_row_counts_in_one_bucket_are_not_retuned(monkeypatch):
    monkeypatch.delenv("KERNELS_TRITON_ONE_CONFIG", raising=False)
    launcher = _triton_linear()
    tuned = launcher._autotuned(launcher._linear_forward_kernel)
    before = len(tuned.cache)
    weight = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16)
    for rows in (600, 700, 1000, 1024):
        kernels.linear(torch.randn(rows, 256, device="cuda", dtype=torch.bfloat16), weight, backend="triton")
    assert len(tuned.cache) == before + 1


# ----------------------------------------------------------------------------------------------------------------------
# The Triton kernels compiled for the GPU targets without a GPU (the interpreter accepts code that codegen rejects)
# ----------------------------------------------------------------------------------------------------------------------

def _compile_for_gpu(arch: int) -> None:
    """Compiles the forward and backward kernels for sm_<arch> (bf16 and fp32/TF32, the heaviest epilogues)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels.triton import linear as launcher

    def compile_kernel(fn, pointers, scalars, constexprs):
        signature = {**pointers, **{name: "i32" for name in scalars}, "dropout_p": "fp32", "dropout_scale": "fp32",
                     **{name: "constexpr" for name in constexprs}}
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": 8, "num_stages": 3})

    tiles = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}
    # Forward: gated SwiGLU in bf16 with every epilogue, and erf GELU in fp32 with TF32.
    for element, precision, activation, gated in (("bf16", "ieee", 4, True), ("fp32", "tf32", 2, False)):
        pointers = {name: f"*{element}" for name in ("x_ptr", "w_ptr", "w_up_ptr", "bias_ptr", "bias_up_ptr",
                                                      "residual_ptr", "out_ptr", "pre_ptr")}
        scalars = ["M", "N", "K", "M_BUCKET", "stride_xm", "stride_xk", "stride_wn", "stride_wk", "stride_un",
                   "stride_uk", "stride_rm", "stride_rn", "stride_om", "stride_on", "stride_pm", "stride_pn"]
        compile_kernel(launcher._linear_forward_kernel, {**pointers, "seed_ptr": "*i64"}, scalars,
                       dict(HAS_BIAS=True, ACTIVATION=activation, GATED=gated, DROPOUT=True, HAS_RESIDUAL=True,
                            SAVE_PRE=True, PRECISION=precision, **tiles))
    # Backward: the gated derivative in the epilogue of the gradient GEMM, bf16.
    pointers = {name: "*bf16" for name in ("g_ptr", "w_ptr", "pre_ptr", "grad_pre_ptr")}
    scalars = ["M", "N", "K", "M_BUCKET", "stride_gm", "stride_gk", "stride_wk", "stride_wn", "stride_pm", "stride_pn",
               "stride_dm", "stride_dn"]
    compile_kernel(launcher._linear_act_backward_kernel, {**pointers, "bias_partial_ptr": "*fp32", "seed_ptr": "*i64"},
                   scalars, dict(FROM_GEMM=True, ACTIVATION=4, GATED=True, DROPOUT=True, PRECISION="ieee", **tiles))


@pytest.mark.slow
@pytest.mark.parametrize("arch", [80, 90])
def test_triton_kernels_compile_for_gpu_targets(arch):
    # In a child process without TRITON_INTERPRET: under the interpreter @triton.jit gives no compilable function.
    pytest.importorskip("triton.compiler")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, os.path.abspath(__file__), str(arch)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


if __name__ == "__main__":
    _compile_for_gpu(int(sys.argv[1]))
