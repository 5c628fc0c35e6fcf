"""kernels.feed_forward (Linear -> activation -> dropout -> Linear [+ residual]) on every backend of this machine,
against kernels.reference.feed_forward; dropout through the keep-mask rebuilt from the seed."""

import pytest
import torch

import kernels
from kernels import reference
from kernels.feed_forward import dropout_keep_mask
from kernels.testing import available_devices, backends_for, check_against_reference

ACTIVATIONS = reference.ACTIVATIONS
RNG_SEED = 1234  # the generator state a dropout call starts from, so the test can redraw the kernel's seed


def _backends(device="cpu"):
    return ["torch"] + backends_for("feed_forward", device)


def _block(rows, d, ffn, activation, dtype=torch.float32, device="cpu", bias=True, residual=True, lead=()):
    """x (*lead, rows, d), w1 (ffn or 2 ffn, d), b1, w2 (d, ffn), b2, residual; weights scaled like nn.Linear."""
    width = 2 * ffn if activation in reference.GATED_ACTIVATIONS else ffn

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, device=device) * scale).to(dtype).requires_grad_()

    x = leaf(*lead, rows, d)
    w1, w2 = leaf(width, d, scale=max(d, 1) ** -0.5), leaf(d, ffn, scale=max(ffn, 1) ** -0.5)
    b1, b2 = (leaf(width), leaf(d)) if bias else (None, None)
    res = leaf(*lead, rows, d) if residual else None
    return x, w1, b1, w2, b2, res


def _run(backend, reseed=False):
    def run(x, w1, b1, w2, b2, *, activation="gelu", dropout_p=0.0, residual=None, dropout_mask=None):
        if reseed:
            torch.manual_seed(RNG_SEED)
        return kernels.feed_forward(x, w1, b1, w2, b2, activation=activation, dropout_p=dropout_p,
                                    residual=residual, backend=backend)
    return run


def _kernel_mask(rows, ffn, dropout_p, device="cpu"):
    """The keep-mask a call made right after torch.manual_seed(RNG_SEED) applies (it draws its seed first)."""
    torch.manual_seed(RNG_SEED)
    seed = torch.randint(2**31, (1,), dtype=torch.int64, device=device)
    return dropout_keep_mask(seed, rows, ffn, dropout_p, device=device)


@pytest.mark.interpret
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_each_activation_with_residual(backend, activation):
    x, w1, b1, w2, b2, res = _block(7, 24, 33, activation)
    check_against_reference(_run(backend), reference.feed_forward, x, w1, b1, w2, b2, activation=activation,
                            residual=res)


@pytest.mark.interpret
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("rows, d, ffn", [(1, 1, 1), (7, 129, 65), (40, 17, 3)])
def test_odd_sizes_without_bias_or_residual(backend, rows, d, ffn):
    x, w1, b1, w2, b2, _ = _block(rows, d, ffn, "relu", bias=False, residual=False)
    check_against_reference(_run(backend), reference.feed_forward, x, w1, None, w2, None, activation="relu")


@pytest.mark.parametrize("backend", backends_for("feed_forward", "cpu"))
@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_dropout_matches_reference_with_rebuilt_mask(backend, activation):
    # Forward and backward apply the same mask: the gradients are checked against the reference with that mask.
    rows, ffn, p = 9, 40, 0.3
    x, w1, b1, w2, b2, res = _block(rows, 16, ffn, activation, lead=(2,))
    mask = _kernel_mask(2 * rows, ffn, p).reshape(2, rows, ffn)
    check_against_reference(_run(backend, reseed=True), reference.feed_forward, x, w1, b1, w2, b2,
                            activation=activation, dropout_p=p, residual=res, dropout_mask=mask)


@pytest.mark.parametrize("backend", backends_for("feed_forward", "cpu"))
def test_dropout_statistics_and_reproducibility(backend):
    # With w2 = identity the output is the dropped-out activation itself: count the zeros.
    rows, ffn, p = 64, 64, 0.25
    x = torch.randn(rows, 8)
    w1 = torch.randn(ffn, 8)
    b1 = torch.full((ffn,), 50.0)  # relu(pre) > 0 everywhere, so every zero is a dropped element
    w2 = torch.eye(ffn)
    torch.manual_seed(RNG_SEED)
    out = kernels.feed_forward(x, w1, b1, w2, None, activation="relu", dropout_p=p, backend=backend)
    dropped = (out == 0).double().mean().item()
    assert abs(dropped - p) < 4 * (p * (1 - p) / out.numel()) ** 0.5, dropped
    kept = out != 0
    assert torch.equal(kept, _kernel_mask(rows, ffn, p))
    torch.testing.assert_close(out[kept], (torch.relu(x @ w1.t() + b1) / (1 - p))[kept])
    torch.manual_seed(RNG_SEED)
    again = kernels.feed_forward(x, w1, b1, w2, None, activation="relu", dropout_p=p, backend=backend)
    assert torch.equal(out, again)
    different = kernels.feed_forward(x, w1, b1, w2, None, activation="relu", dropout_p=p, backend=backend)
    assert not torch.equal(out != 0, different != 0)


@pytest.mark.parametrize("backend", _backends())
def test_non_contiguous_inputs(backend):
    x = torch.randn(3, 16, 10).transpose(1, 2).requires_grad_()  # (3, 10, 16), last dim strided
    w1 = (torch.randn(24, 32) / 4)[:, ::2].requires_grad_()
    w2 = (torch.randn(24, 16) / 4).t().requires_grad_()  # (16, 24) transposed
    b1, b2 = torch.randn(24, requires_grad=True), torch.randn(16, requires_grad=True)
    res = torch.randn(3, 16, 10).transpose(1, 2).requires_grad_()
    check_against_reference(_run(backend), reference.feed_forward, x, w1, b1, w2, b2, activation="silu",
                            residual=res)


@pytest.mark.parametrize("backend", backends_for("feed_forward", "cpu"))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes(backend, dtype):
    served = kernels._backend.implementations("feed_forward")[backend].dtypes["cpu"]
    if dtype not in served:
        pytest.skip(f"backend {backend} does not serve {dtype} on cpu")
    x, w1, b1, w2, b2, res = _block(9, 24, 40, "geglu", dtype=dtype)
    check_against_reference(_run(backend), reference.feed_forward, x, w1, b1, w2, b2, activation="geglu",
                            residual=res)


@pytest.mark.parametrize("backend", _backends())
def test_empty_input(backend):
    x, w1, b1, w2, b2, res = _block(0, 8, 12, "gelu")
    out = kernels.feed_forward(x, w1, b1, w2, b2, residual=res, backend=backend)
    assert out.shape == (0, 8)
    out.sum().backward()
    assert torch.equal(w1.grad, torch.zeros_like(w1))


def test_bad_inputs():
    x, w1, b1, w2, b2, res = _block(4, 8, 12, "gelu")
    with pytest.raises(TypeError, match="`w2`"):
        kernels.feed_forward(x, w1, b1, None, b2)
    with pytest.raises(ValueError, match="`w1` has shape"):
        kernels.feed_forward(x, w1.t(), b1, w2, b2)
    with pytest.raises(ValueError, match="`w2` has shape"):
        kernels.feed_forward(x, w1, b1, w2.t(), b2)
    with pytest.raises(ValueError, match="`b2` has shape"):
        kernels.feed_forward(x, w1, b1, w2, b1)
    with pytest.raises(ValueError, match="`residual` has shape"):
        kernels.feed_forward(x, w1, b1, w2, b2, residual=res[:, :3])
    with pytest.raises(ValueError, match="`residual` has dtype"):
        kernels.feed_forward(x, w1, b1, w2, b2, residual=res.double())
    with pytest.raises(ValueError, match="`dropout_p` must be"):
        kernels.feed_forward(x, w1, b1, w2, b2, dropout_p=1.5)
    with pytest.raises(ValueError, match="`activation` must be one of"):
        kernels.feed_forward(x, w1, b1, w2, b2, activation="gelu_erf")
    with pytest.raises(ValueError, match="`w2` has shape"):  # gated: w2 takes ffn = w1 rows / 2
        kernels.feed_forward(x, w1, b1, w2, b2, activation="swiglu")


def test_negative_control_mask_from_another_seed_fails_the_checker():
    backend = _backends()[-1]
    if backend == "torch":
        pytest.skip("no fused backend here")
    x, w1, b1, w2, b2, res = _block(9, 16, 40, "gelu")
    torch.manual_seed(RNG_SEED + 1)
    wrong_mask = dropout_keep_mask(torch.randint(2**31, (1,)), 9, 40, 0.3)
    with pytest.raises(AssertionError):
        check_against_reference(_run(backend, reseed=True), reference.feed_forward, x, w1, b1, w2, b2,
                                activation="gelu", dropout_p=0.3, residual=res, dropout_mask=wrong_mask)


@pytest.mark.parametrize("backend", backends_for("feed_forward", "cpu"))
def test_opcheck_primitives_and_composites(backend):
    prefix = "triton_" if backend == "triton" else ""
    forward = getattr(torch.ops.kernels, f"{prefix}linear_forward")
    act_backward = getattr(torch.ops.kernels, f"{prefix}linear_act_backward")
    seed = torch.tensor([12345], dtype=torch.int64)
    x, w1, b1, w2, b2, res = _block(3, 4, 5, "swiglu")
    # The primitives have no autograd of their own (the composites' backward calls them): plain tensors.
    xd, w1d, b1d, w2d = (t.detach() for t in (x, w1, b1, w2))
    torch.library.opcheck(forward, (xd, w1d, b1d, "swiglu", 0.2, seed, None, True))
    torch.library.opcheck(forward, (xd, w1d, None, None, 0.0, seed, torch.randn(3, 10), False))
    pre = torch.randn(3, 10)
    torch.library.opcheck(act_backward, (torch.randn(3, 4), w2d, pre, "swiglu", 0.2, seed))
    torch.library.opcheck(act_backward, (torch.randn(3, 5), None, pre[:, :5], "gelu_tanh", 0.0, seed))
    torch.library.opcheck(getattr(torch.ops.kernels, f"{backend}_feed_forward"),
                          (x, w1, b1, w2, b2, "swiglu", 0.2, seed, res, True))
    if backend == "triton":
        torch.library.opcheck(torch.ops.kernels.triton_matmul, (torch.randn(5, 7), torch.randn(7, 3)))


@pytest.mark.skipif("native" not in backends_for("feed_forward", "cpu"), reason="kernels._C lacks the ops")
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck_fp64_native(activation):
    block = _block(3, 5, 4, activation, dtype=torch.float64, lead=(2,))

    def fn(*tensors):
        torch.manual_seed(RNG_SEED)  # the same dropout mask on every evaluation
        x, w1, b1, w2, b2, res = tensors
        return kernels.feed_forward(x, w1, b1, w2, b2, activation=activation, dropout_p=0.25, residual=res,
                                    backend="native")

    assert torch.autograd.gradcheck(fn, block)


@pytest.mark.parametrize("backend", backends_for("feed_forward", "cpu"))
def test_torch_compile_fullgraph(backend):
    x, w1, b1, w2, b2, res = _block(6, 16, 24, "swiglu")

    @torch.compile(fullgraph=True, backend="aot_eager")
    def block(x, w1, b1, w2, b2, res):
        return kernels.feed_forward(x, w1, b1, w2, b2, activation="swiglu", residual=res, backend=backend)

    check_against_reference(lambda x, w1, b1, w2, b2, activation=None, residual=None: block(x, w1, b1, w2, b2,
                                                                                             residual),
                            reference.feed_forward, x, w1, b1, w2, b2, activation="swiglu", residual=res)


# ----------------------------------------------------------------------------------------------------------------------
# Weights as Hugging Face models hold them: separate gate / up projections, GPT-2 Conv1D (in, out) as a view
# ----------------------------------------------------------------------------------------------------------------------

def _split_block(rows, d, ffn, dtype=torch.float32, bias=True):
    """x, w_gate, w_up (ffn, d) held apart, their biases (or None), w2 (d, ffn), b2, residual."""
    x, w1, b1, w2, b2, res = _block(rows, d, ffn, "swiglu", dtype=dtype, bias=bias)
    w_gate, w_up = (w.detach().clone().requires_grad_() for w in w1.chunk(2))
    b_gate, b_up = (b.detach().clone().requires_grad_() for b in b1.chunk(2)) if bias else (None, None)
    return x, w_gate, w_up, b_gate, b_up, w2, b2, res


def _run_split(backend, reseed=False):
    run = _run(backend, reseed)

    def split(x, w_gate, w_up, b_gate, b_up, w2, b2, *, activation, dropout_p=0.0, residual=None,
              dropout_mask=None):
        b1 = None if b_gate is None else (b_gate, b_up)
        return run(x, (w_gate, w_up), b1, w2, b2, activation=activation, dropout_p=dropout_p, residual=residual)
    return split


def _reference_split(x, w_gate, w_up, b_gate, b_up, w2, b2, *, activation, dropout_p=0.0, residual=None,
                     dropout_mask=None):
    # The reference alone concatenates the pair into the packed [gate; up] layout it knows.
    b1 = None if b_gate is None else torch.cat([b_gate, b_up])
    return reference.feed_forward(x, torch.cat([w_gate, w_up]), b1, w2, b2, activation, dropout_p, residual,
                                  dropout_mask=dropout_mask)


@pytest.mark.interpret
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("activation", reference.GATED_ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
def test_separate_gate_and_up_projections(backend, activation, bias):
    x, w_gate, w_up, b_gate, b_up, w2, b2, res = _split_block(11, 24, 37, bias=bias)
    check_against_reference(_run_split(backend), _reference_split, x, w_gate, w_up, b_gate, b_up, w2, b2,
                            activation=activation, residual=res)


@pytest.mark.parametrize("backend", backends_for("feed_forward", "cpu"))
def test_separate_gate_and_up_with_dropout(backend):
    rows, ffn, p = 9, 40, 0.3
    x, w_gate, w_up, b_gate, b_up, w2, b2, res = _split_block(rows, 16, ffn)
    mask = _kernel_mask(rows, ffn, p)
    check_against_reference(_run_split(backend, reseed=True), _reference_split, x, w_gate, w_up, b_gate, b_up, w2,
                            b2, activation="swiglu", dropout_p=p, residual=res, dropout_mask=mask)


@pytest.mark.interpret
@pytest.mark.parametrize("backend", _backends())
def test_conv1d_weights_as_transposed_views(backend):
    # GPT-2's MLP: Conv1D weights (in, out) passed as .t() views; their gradients reach the (in, out) parameters.
    x, w1, b1, w2, b2, res = _block(10, 24, 40, "gelu_tanh")
    c_fc, c_proj = w1.detach().t().contiguous().requires_grad_(), w2.detach().t().contiguous().requires_grad_()

    def run(x, c_fc, b1, c_proj, b2, *, activation, residual):
        assert not c_fc.t().is_contiguous()
        return kernels.feed_forward(x, c_fc.t(), b1, c_proj.t(), b2, activation=activation, residual=residual,
                                    backend=backend)

    def ref(x, c_fc, b1, c_proj, b2, *, activation, residual):
        return reference.feed_forward(x, c_fc.t(), b1, c_proj.t(), b2, activation, 0.0, residual)

    check_against_reference(run, ref, x, c_fc, b1, c_proj, b2, activation="gelu_tanh", residual=res)


class _CopyRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every op seen and every aten op that concatenates or copies one of ``weights`` (same storage). A
    registered custom op is seen as one op: its body runs below the mode."""

    COPYING = ("cat", "stack", "clone", "copy_", "_to_copy", "contiguous", "expand_copy", "index_select")

    def __init__(self, weights):
        super().__init__()
        self.storages = {w.untyped_storage().data_ptr() for w in weights}
        self.copies, self.seen = [], set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.seen.add(name)
        if name in self.COPYING:
            flat = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
            if any(t.untyped_storage().data_ptr() in self.storages for t in flat):
                self.copies.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", _backends())
def test_hf_weights_are_never_copied(backend):
    x, w_gate, w_up, b_gate, b_up, w2, b2, res = _split_block(6, 16, 24)
    conv = torch.randn(16, 24, requires_grad=True)  # a Conv1D (in, out) weight
    weights = (w_gate, w_up, b_gate, b_up, w2, conv)
    with _CopyRecorder(weights) as recorder:
        for grad_mode in (False, True):  # inference runs the composite's body in the open; training its backward
            with torch.set_grad_enabled(grad_mode):
                out = kernels.feed_forward(x, (w_gate, w_up), (b_gate, b_up), w2, b2, activation="swiglu",
                                           residual=res, backend=backend)
                gelu = kernels.feed_forward(x, conv.t(), None, w2, None, activation="gelu_tanh", backend=backend)
        (out.sum() + gelu.sum()).backward()
    assert recorder.copies == []
    assert all(w.grad is not None for w in weights)
    if backend != "torch":  # the ops below the public function were seen, so a copy there would have been caught
        assert any("linear_act_backward" in name for name in recorder.seen), recorder.seen


@pytest.mark.parametrize("backend", backends_for("feed_forward", "cpu"))
def test_opcheck_separate_gate_and_up(backend):
    x, w_gate, w_up, b_gate, b_up, w2, b2, res = _split_block(3, 4, 5)
    seed = torch.tensor([12345], dtype=torch.int64)
    torch.library.opcheck(getattr(torch.ops.kernels, f"{backend}_feed_forward"),
                          (x, w_gate, b_gate, w2, b2, "swiglu", 0.2, seed, res, True, w_up, b_up))
    torch.library.opcheck(getattr(torch.ops.kernels, f"{backend}_linear"),
                          (x, w_gate, None, "geglu", True, w_up, None))
    if backend == "native":
        torch.library.opcheck(torch.ops.kernels.linear_epilogue, (torch.randn(3, 10), "swiglu", 0.2, seed,
                                                                  torch.randn(3, 5)))
    else:
        detached = [t.detach() for t in (x, w_gate, b_gate, w_up, b_up)]
        torch.library.opcheck(torch.ops.kernels.triton_linear_forward,
                              (detached[0], detached[1], detached[2], "swiglu", 0.0, seed, None, True, detached[3],
                               detached[4]))


@pytest.mark.skipif("native" not in backends_for("feed_forward", "cpu"), reason="kernels._C lacks the ops")
def test_gradcheck_fp64_native_separate_gate_and_up():
    block = _split_block(4, 5, 3, dtype=torch.float64)

    def fn(x, w_gate, w_up, b_gate, b_up, w2, b2, res):
        torch.manual_seed(RNG_SEED)
        return kernels.feed_forward(x, (w_gate, w_up), (b_gate, b_up), w2, b2, activation="geglu", dropout_p=0.25,
                                    residual=res, backend="native")

    assert torch.autograd.gradcheck(fn, block)


def test_bad_separate_gate_and_up():
    x, w_gate, w_up, b_gate, b_up, w2, b2, _ = _split_block(4, 8, 12)
    with pytest.raises(ValueError, match="`w1` is a \\(gate, up\\) pair"):
        kernels.feed_forward(x, (w_gate, w_up), None, w2, b2, activation="gelu")
    with pytest.raises(ValueError, match="`w1` pairs a gate of shape"):
        kernels.feed_forward(x, (w_gate, w_up[:5]), None, w2, b2, activation="swiglu")
    with pytest.raises(TypeError, match="`w1` must be a tensor or a \\(gate, up\\) pair"):
        kernels.feed_forward(x, (w_gate, w_up, w_up), None, w2, b2, activation="swiglu")
    with pytest.raises(TypeError, match="`b1` must be None or a \\(gate, up\\) pair"):
        kernels.feed_forward(x, (w_gate, w_up), b_gate, w2, b2, activation="swiglu")
    with pytest.raises(ValueError, match="`b1\\[up\\]` has shape"):
        kernels.feed_forward(x, (w_gate, w_up), (b_gate, b_up[:3]), w2, b2, activation="swiglu")
    with pytest.raises(ValueError, match="`w1\\[up\\]` has dtype"):
        kernels.feed_forward(x, (w_gate, w_up.double()), None, w2, b2, activation="swiglu")


@pytest.mark.slow
@pytest.mark.skipif("native" not in backends_for("feed_forward", "cpu"), reason="kernels._C lacks the ops")
def test_realistic_size_native_cpu():
    x, w1, b1, w2, b2, res = _block(1000, 768, 3072, "gelu")
    with torch.no_grad():
        check_against_reference(_run("native"), reference.feed_forward, x, w1, b1, w2, b2, activation="gelu",
                                residual=res, backward=False)


# ----------------------------------------------------------------------------------------------------------------------
# GPU tier
# ----------------------------------------------------------------------------------------------------------------------

def _gpu_backends():
    return backends_for("feed_forward", "cuda") if "cuda" in available_devices() else []


@pytest.mark.gpu
@pytest.mark.parametrize("backend", _gpu_backends())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("rows, d, ffn", [(1, 1, 1), (7, 129, 65), (1000, 768, 3072)])
def test_gpu_matches_reference(backend, dtype, activation, rows, d, ffn):
    x, w1, b1, w2, b2, res = _block(rows, d, ffn, activation, dtype=dtype, device="cuda")
    check_against_reference(_run(backend), reference.feed_forward, x, w1, b1, w2, b2, activation=activation,
                            residual=res)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", _gpu_backends())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_hf_weight_layouts(backend, dtype):
    # Llama's separate gate / up projections and GPT-2's Conv1D (in, out) views, at a realistic size.
    x, w_gate, w_up, b_gate, b_up, w2, b2, res = (t.detach().to("cuda", dtype).requires_grad_()
                                                  for t in _split_block(1000, 256, 688))
    check_against_reference(_run_split(backend), _reference_split, x, w_gate, w_up, None, None, w2, None,
                            activation="swiglu", residual=res)
    c_fc = w_gate.detach().t().contiguous().requires_grad_()  # (256, 688): Conv1D (in, out)
    check_against_reference(lambda x, c_fc, w2, activation: kernels.feed_forward(x, c_fc.t(), None, w2, None,
                                                                                 activation=activation,
                                                                                 backend=backend),
                            lambda x, c_fc, w2, activation: reference.feed_forward(x, c_fc.t(), None, w2, None,
                                                                                   activation),
                            x, c_fc, w2, activation="gelu_tanh")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", _gpu_backends())
def test_gpu_dropout_mask(backend):
    rows, ffn, p = 2048, 1024, 0.1
    x, w1, b1, w2, b2, res = _block(rows, 256, ffn, "gelu", dtype=torch.bfloat16, device="cuda")
    mask = _kernel_mask(rows, ffn, p, device="cuda")
    check_against_reference(_run(backend, reseed=True), reference.feed_forward, x, w1, b1, w2, b2,
                            activation="gelu", dropout_p=p, residual=res, dropout_mask=mask)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", _gpu_backends())
def test_gpu_deterministic_50x(backend):
    block = _block(4096, 1024, 4096, "swiglu", dtype=torch.bfloat16, device="cuda")
    run = _run(backend, reseed=True)
    first = run(*block[:5], activation="swiglu", dropout_p=0.1, residual=block[5])
    grad = torch.randn_like(first)
    first_grads = torch.autograd.grad(first, block, grad)
    for _ in range(50):
        out = run(*block[:5], activation="swiglu", dropout_p=0.1, residual=block[5])
        assert torch.equal(out, first)
        for g, g0 in zip(torch.autograd.grad(out, block, grad), first_grads):
            assert torch.equal(g, g0)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", _gpu_backends())
def test_gpu_torch_compile_and_cuda_graph(backend):
    x, w1, b1, w2, b2, res = _block(512, 256, 1024, "gelu", dtype=torch.bfloat16, device="cuda")
    compiled = torch.compile(lambda *a: kernels.feed_forward(*a[:5], residual=a[5], backend=backend), fullgraph=True)
    check_against_reference(lambda x, w1, b1, w2, b2, activation=None, residual=None: compiled(x, w1, b1, w2, b2,
                                                                                                residual),
                            reference.feed_forward, x, w1, b1, w2, b2, activation="gelu", residual=res)
    with torch.no_grad():
        static = [t.detach() for t in (x, w1, b1, w2, b2, res)]
        kernels.feed_forward(*static[:5], residual=static[5], backend=backend)  # warm-up (autotuning) outside
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = kernels.feed_forward(*static[:5], residual=static[5], backend=backend)
        graph.replay()
        torch.cuda.synchronize()
        expected = kernels.feed_forward(*static[:5], residual=static[5], backend=backend)
        assert torch.equal(out, expected)
