"""kernels._ops._direct and kernels._C.direct (csrc/autograd/direct_calls.cpp): the typed entry points of the forward
ops give what the registered ops give (outputs, gradients through the C++ autograd, errors), and the OpOverload is
still what torch.compile and a TorchFunctionMode see."""

import pytest
import torch
from torch.overrides import TorchFunctionMode

import kernels  # noqa: F401  (loads kernels._C and registers the ops)
from kernels._extension import _C
from kernels._ops import _direct

pytestmark = pytest.mark.skipif(_C is None or not hasattr(_C, "direct"), reason="kernels._C not built")


def _attention_inputs():
    q, k, v = (torch.randn(2, 4, 5, 8, requires_grad=True) for _ in range(3))
    mask = (torch.rand(5, 5) > 0.3).expand(2, 4, 5, 5)
    padding = torch.zeros(2, 5, dtype=torch.bool)
    padding[1, 3:] = True
    return (q, k, v, mask, padding, True, 0.3, 0.0, None)


def _varlen_inputs():
    q, k, v = (torch.randn(9, 2, 8, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    return (q, k, v, cu, cu, 5, 5, True, 0.35, 0.0, None)


CALLS = {
    "attention_forward": _attention_inputs,
    "varlen_attention_forward": _varlen_inputs,
    "layer_norm_forward": lambda: (torch.randn(6, 16, requires_grad=True), torch.randn(6, 16, requires_grad=True),
                                   torch.randn(16, requires_grad=True), torch.randn(16, requires_grad=True), 1e-5,
                                   False),
    "residual_add": lambda: (torch.randn(3, 7, requires_grad=True), torch.randn(3, 7, requires_grad=True)),
    "masked_softmax_forward": lambda: (torch.randn(2, 5, 6, requires_grad=True), torch.rand(5, 6) > 0.4, 0.5, True),
}


def _first(result):
    return result[0] if isinstance(result, tuple) else result


@pytest.mark.parametrize("name", sorted(CALLS))
def test_direct_entry_matches_the_registered_op(name):
    args = CALLS[name]()
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    direct = _first(getattr(_C.direct, name)(*args))
    registered = _first(getattr(torch.ops.kernels, name).default(*args))
    assert torch.equal(direct, registered)
    assert direct.grad_fn is not None  # the C++ autograd recorded the graph
    grad = torch.randn_like(direct)
    for got, want in zip(torch.autograd.grad(direct, inputs, grad), torch.autograd.grad(registered, inputs, grad)):
        assert torch.equal(got, want)
    with torch.no_grad():
        assert _first(getattr(_C.direct, name)(*args)).grad_fn is None


def test_direct_entry_raises_the_ops_errors():
    with pytest.raises(ValueError, match=r"argument `residual` has shape \[8, 4\]; expected \[4, 8\]"):
        _C.direct.residual_add(torch.randn(4, 8), torch.randn(8, 4))
    with pytest.raises(TypeError):  # pybind11 refuses a non-tensor argument
        _C.direct.residual_add(torch.randn(4, 8), 3)


class _Recorder(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


def test_forward_op_uses_the_registered_op_under_a_torch_function_mode():
    call = _direct.forward_op("residual_add")
    x, r = torch.randn(3, 4), torch.randn(3, 4)
    with _Recorder() as mode:
        out = call(x, r)
    assert torch.ops.kernels.residual_add.default in mode.seen
    assert torch.equal(out, call(x, r))


def test_forward_op_compiles_without_graph_break():
    call = _direct.forward_op("layer_norm_forward")
    x, w = torch.randn(4, 8), torch.randn(8)
    compiled = torch.compile(lambda x, w: call(x, None, w, None, 1e-5, True)[0], fullgraph=True, backend="eager")
    assert torch.equal(compiled(x, w), call(x, None, w, None, 1e-5, True)[0])


@pytest.mark.parametrize("activation", [None, "gelu", "swiglu"])
def test_direct_linear_forward_matches_the_registered_op(activation):
    # linear_forward has no autograd kernel (its autograd is the composite op's, kernels/_ops/feed_forward_autograd.py)
    x, weight, bias, residual = torch.randn(5, 8), torch.randn(12, 8), torch.randn(12), torch.randn(5, 6)
    seed = torch.zeros(1, dtype=torch.int64)
    args = (x, weight, bias, activation, 0.0, seed, residual if activation == "swiglu" else None, True)
    for got, want in zip(_C.direct.linear_forward(*args), torch.ops.kernels.linear_forward.default(*args)):
        assert torch.equal(got, want)
