"""kernels._ops._fast / kernels._C.fast: the public functions' common calls in one C++ call.

A fast call must give exactly what the Python path gives (the same op, bit for bit, gradients included), take only
the calls it can serve (None for anything else, so the Python path raises its own errors), and follow the registry
(backend asked for, auto order, torch.compile and torch-function modes)."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

import kernels
from kernels import _backend
from kernels._ops import _fast

pytestmark = pytest.mark.skipif(_fast._FAST is None, reason="kernels._C is not built")

NORMS = {
    "layer_norm": (kernels.layer_norm, lambda x, n, w, b, eps, r: _fast.layer_norm(x, n, w, b, eps, r)),
    "rms_norm": (lambda x, n, w, b, eps, **kw: kernels.rms_norm(x, n, w, eps, **kw),
                 lambda x, n, w, b, eps, r: _fast.rms_norm(x, n, w, eps, r)),
}


def _inputs(shape, dtype=torch.float32, grad=False, residual=False):
    generator = torch.Generator().manual_seed(0)
    n = shape[-1]
    tensors = [torch.randn(shape, generator=generator, dtype=dtype), torch.randn(n, generator=generator, dtype=dtype),
               torch.randn(n, generator=generator, dtype=dtype)]
    if residual:
        tensors.append(torch.randn(shape, generator=generator, dtype=dtype))
    return [t.requires_grad_(grad) for t in tensors]


def _python_path(monkeypatch):
    monkeypatch.setattr(_fast, "usable", lambda backend: False)


@pytest.mark.parametrize("op", NORMS)
@pytest.mark.parametrize("shape", [(5, 48), (2, 3, 40), (7,), (2, 1, 3, 16)])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_fast_call_is_the_python_path_bit_for_bit(monkeypatch, op, shape, residual, dtype):
    public, fast = NORMS[op]
    x, w, b, *r = _inputs(shape, dtype, grad=True, residual=residual)
    r = r[0] if r else None
    b = b if op == "layer_norm" else None
    eps = 1e-5 if op == "layer_norm" else None  # rms_norm: None is the dtype's machine epsilon, as F.rms_norm
    assert fast(x, shape[-1], w, b, eps, r) is not None  # this call is the common one

    def run():
        out = public(x, (shape[-1],), w, b, eps, residual=r)
        y, h = out if residual else (out, None)
        loss = (y.float() * torch.linspace(-1, 1, y.numel()).view(y.shape)).sum()
        if h is not None:
            loss = loss + h.float().square().sum()
        grads = torch.autograd.grad(loss, [t for t in (x, w, b, r) if t is not None and t.requires_grad])
        return (y, h, *grads)

    fast_results = run()
    _python_path(monkeypatch)
    for got, expected in zip(fast_results, run()):
        if expected is None:
            assert got is None
        else:
            assert got.shape == expected.shape and torch.equal(got, expected)


def test_non_contiguous_input_and_no_parameters():
    x = torch.randn(4, 6, 32).transpose(0, 1)  # (6, 4, 32), not contiguous
    out = _fast.layer_norm(x, (32,), None, None, 1e-5, None)
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(x, (32,)))
    assert out.shape == x.shape


@pytest.mark.parametrize("case", [
    "subclass", "two_dims", "bool_dim", "eps_nan", "eps_negative", "eps_string", "eps_bool", "eps_tensor",
    "eps_huge_int", "weight_shape", "weight_dtype", "bias_list", "residual_shape", "residual_dtype", "half_on_cpu",
    "int_x", "empty", "wrong_last_dim",
])
def test_any_other_call_takes_the_python_path(case):
    x, w, b = _inputs((3, 8))
    args = {"x": x, "n": 8, "w": w, "b": b, "eps": 1e-5, "r": None}

    class Sub(torch.Tensor):
        pass

    changes = {
        "subclass": {"x": x.as_subclass(Sub)}, "two_dims": {"n": (3, 8), "w": None, "b": None},
        "bool_dim": {"n": True}, "eps_nan": {"eps": float("nan")}, "eps_negative": {"eps": -1e-5},
        "eps_string": {"eps": "1e-5"}, "eps_bool": {"eps": True}, "eps_tensor": {"eps": torch.tensor(1e-5)},
        "eps_huge_int": {"eps": 10 ** 400}, "weight_shape": {"w": torch.randn(1, 8)},
        "weight_dtype": {"w": w.double()}, "bias_list": {"b": [0.0] * 8}, "residual_shape": {"r": torch.randn(8)},
        "residual_dtype": {"r": x.double()}, "half_on_cpu": {"x": x.half(), "w": w.half(), "b": b.half()},
        "int_x": {"x": x.int()}, "empty": {"x": x[:0]}, "wrong_last_dim": {"n": 4, "w": None, "b": None},
    }
    args.update(changes[case])
    assert _fast.layer_norm(args["x"], args["n"], args["w"], args["b"], args["eps"], args["r"]) is None


def test_eps_none_is_refused_for_layer_norm_and_the_dtype_epsilon_for_rms_norm():
    x, w, _ = _inputs((3, 8))
    assert _fast.layer_norm(x, 8, w, None, None, None) is None
    torch.testing.assert_close(_fast.rms_norm(x, 8, w, None, None), torch.nn.functional.rms_norm(x, (8,), w),
                               rtol=0, atol=0)


def test_errors_of_bad_arguments_are_the_python_paths():
    x, w, b = _inputs((3, 8))
    with pytest.raises(ValueError, match="argument `eps`"):
        kernels.layer_norm(x, (8,), w, b, -1.0)
    with pytest.raises(ValueError, match="argument `weight` has shape"):
        kernels.layer_norm(x, (8,), w[:4], b)
    with pytest.raises(ValueError, match="argument `residual` has dtype"):
        kernels.rms_norm(x, (8,), w, residual=x.double())


@pytest.mark.parametrize("backend, fast", [("auto", True), ("native", True), ("torch", False), ("triton", False),
                                           ("bogus", False)])
def test_usable_for_the_backends_that_run_natively(backend, fast):
    assert _fast.usable(backend) is fast


def test_usable_follows_use_backend_and_the_default():
    with kernels.use_backend("torch"):
        assert not _fast.usable("auto")
        assert _fast.usable("native")
    default = _backend.get_default_backend()
    _backend.set_default_backend("torch")
    try:
        assert not _fast.usable("auto")
    finally:
        _backend.set_default_backend(default)
    assert _fast.usable("auto")


def test_not_usable_under_a_torch_function_mode():
    seen = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    x, w, b = _inputs((3, 8))
    with Record():
        assert not _fast.usable("auto")
        kernels.layer_norm(x, (8,), w, b)
    assert seen  # the mode saw the Python path's torch calls


def test_the_served_table_follows_the_auto_order():
    x, w, b = _inputs((3, 8))
    order = _backend._REGISTRY["layer_norm"].auto_order["cpu"]
    _backend.set_auto_order("layer_norm", "cpu", ())
    try:
        assert _fast.layer_norm(x, 8, w, b, 1e-5, None) is None  # "auto" would run torch: no fast call
        assert _fast.rms_norm(x, 8, w, 1e-5, None) is not None  # another op's table is its own
    finally:
        _backend.set_auto_order("layer_norm", "cpu", order)
    assert _fast.layer_norm(x, 8, w, b, 1e-5, None) is not None


@pytest.mark.parametrize("op", ["layer_norm", "rms_norm"])
def test_the_served_dtypes_are_the_registry_native_ones(op):
    native = _backend.implementations(op)["native"].dtypes["cpu"]
    for dtype in _fast._FLOATING:
        x = torch.randn(2, 8, dtype=dtype)
        served = NORMS[op][1](x, 8, None, None, 1e-5, None) is not None
        assert served == (dtype in native), dtype


def test_compiled_calls_trace_the_registered_op_without_a_graph_break():
    x, w, b = _inputs((3, 8))
    compiled = torch.compile(lambda x: kernels.layer_norm(x, (8,), w, b), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), kernels.layer_norm(x, (8,), w, b), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(5, 24), (2, 3, 24), (24,)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_fast_call_is_f_linear_with_its_gradients(monkeypatch, shape, with_bias):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator, requires_grad=True)
    weight = torch.randn(24, 40, generator=generator).t().requires_grad_()  # (40, 24), a transposed view
    bias = torch.randn(40, generator=generator, requires_grad=True) if with_bias else None
    assert _fast.linear(x, weight, bias, None) is not None

    def run():
        out = kernels.linear(x, weight, bias)
        leaves = [t for t in (x, weight, bias) if t is not None]
        return (out, *torch.autograd.grad(out.square().sum(), leaves))

    fast_results = run()
    _python_path(monkeypatch)
    for got, expected in zip(fast_results, run()):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("case", ["activation", "subclass", "weight_1d", "weight_width", "weight_dtype", "bias_shape",
                                  "bias_tuple", "half_on_cpu", "int_x", "weight_pair"])
def test_linear_any_other_call_takes_the_python_path(case):
    x, weight, bias = torch.randn(3, 8), torch.randn(5, 8), torch.randn(5)

    class Sub(torch.Tensor):
        pass

    args = {"x": x, "w": weight, "b": bias, "activation": None}
    args.update({
        "activation": {"activation": "gelu"}, "subclass": {"x": x.as_subclass(Sub)}, "weight_1d": {"w": weight[0]},
        "weight_width": {"w": torch.randn(5, 7)}, "weight_dtype": {"w": weight.double()},
        "bias_shape": {"b": bias[:4]}, "bias_tuple": {"b": (bias, bias)},
        "half_on_cpu": {"x": x.half(), "w": weight.half(), "b": bias.half()}, "int_x": {"x": x.int()},
        "weight_pair": {"w": (weight, weight)},
    }[case])
    assert _fast.linear(args["x"], args["w"], args["b"], args["activation"]) is None


def _ff_inputs(shape, activation, with_bias=True, residual=True):
    generator = torch.Generator().manual_seed(0)
    d, ffn, d_out = shape[-1], 24, 10
    width = 2 * ffn if activation in ("swiglu", "geglu") else ffn

    def randn(*s):
        return torch.randn(*s, generator=generator)

    return (randn(*shape), randn(width, d), randn(width) if with_bias else None, randn(d_out, ffn),
            randn(d_out) if with_bias else None, randn(*shape[:-1], d_out) if residual else None)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu"])
@pytest.mark.parametrize("shape", [(5, 16), (2, 3, 16), (16,)])
@pytest.mark.parametrize("with_bias, residual", [(True, True), (False, False)])
def test_feed_forward_fast_call_is_the_python_path_without_autograd(monkeypatch, activation, shape, with_bias,
                                                                     residual):
    x, w1, b1, w2, b2, r = _ff_inputs(shape, activation, with_bias, residual)
    with torch.no_grad():
        assert _fast.feed_forward(x, w1, b1, w2, b2, activation, 0.0, r) is not None
        fast = kernels.feed_forward(x, w1, b1, w2, b2, activation=activation, residual=r)
        _python_path(monkeypatch)
        python = kernels.feed_forward(x, w1, b1, w2, b2, activation=activation, residual=r)
    assert fast.shape == python.shape and torch.equal(fast, python)


@pytest.mark.parametrize("case", ["grad", "dropout", "dropout_bool", "pair", "activation_callable", "activation_none",
                                  "ungated_w1", "w2_width", "b1_shape", "residual_shape", "residual_dtype",
                                  "half_on_cpu", "subclass"])
def test_feed_forward_any_other_call_takes_the_python_path(case):
    x, w1, b1, w2, b2, r = _ff_inputs((3, 16), "swiglu")

    class Sub(torch.Tensor):
        pass

    args = {"x": x, "w1": w1, "b1": b1, "w2": w2, "b2": b2, "activation": "swiglu", "dropout_p": 0.0, "r": r}
    args.update({
        "grad": {"w1": w1.requires_grad_()}, "dropout": {"dropout_p": 0.1}, "dropout_bool": {"dropout_p": False},
        "pair": {"w1": (w1[:24], w1[24:]), "b1": None}, "activation_callable": {"activation": torch.nn.functional.silu},
        "activation_none": {"activation": None}, "ungated_w1": {"w1": w1[:24], "b1": b1[:24]},
        "w2_width": {"w2": w2[:, :20]}, "b1_shape": {"b1": b1[:5]}, "residual_shape": {"r": r[:, :4]},
        "residual_dtype": {"r": r.double()}, "half_on_cpu": {k: v.half() for k, v in (("x", x), ("w1", w1), ("b1", b1),
                                                                                     ("w2", w2), ("b2", b2), ("r", r))},
        "subclass": {"r": r.as_subclass(Sub)},
    }[case])
    assert _fast.feed_forward(args["x"], args["w1"], args["b1"], args["w2"], args["b2"], args["activation"],
                              args["dropout_p"], args["r"]) is None


def test_feed_forward_fast_call_under_inference_mode():
    x, w1, b1, w2, b2, r = _ff_inputs((2, 3, 16), "gelu")
    with torch.inference_mode():
        out = kernels.feed_forward(x, w1, b1, w2, b2, activation="gelu", residual=r)
    with torch.no_grad():
        torch.testing.assert_close(out, kernels.feed_forward(x, w1, b1, w2, b2, activation="gelu", residual=r,
                                                             backend="torch"))
