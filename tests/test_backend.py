"""Backend selection: names, the context manager, the process default, auto's fallback, explicit refusals, the table."""

import subprocess
import sys
import warnings

import pytest
import torch

import kernels
from kernels import _backend
from kernels._backend import BackendError, Implementation


@pytest.fixture
def toy_op(monkeypatch):
    """A registry holding one op whose native backend refuses odd widths, and records which backend ran."""
    monkeypatch.setattr(_backend, "_REGISTRY", {})
    monkeypatch.setattr(_backend, "_WARNED", set())
    ran = []

    def make(name):
        return lambda x: ran.append(name) or x

    def even_only(x):
        return None if x.shape[-1] % 2 == 0 else f"argument `x` has odd width {x.shape[-1]}; native needs even"

    all_types = (torch.float32, torch.float64)
    _backend.register(Implementation("toy", "torch", make("torch"), {"cpu": all_types}))
    _backend.register(Implementation("toy", "native", make("native"), {"cpu": (torch.float32,)}, check=even_only,
                                     native_op="residual_add"))

    def call(x, backend="auto"):
        _backend.select("toy", backend, device=x.device, dtype=x.dtype, x=x).fn(x)
        return ran[-1]

    return call


def test_auto_prefers_the_fast_backend(toy_op):
    assert toy_op(torch.zeros(4)) == "native"


def test_auto_falls_back_with_one_warning_naming_the_argument(toy_op):
    with pytest.warns(RuntimeWarning, match="`x` has odd width 3"):
        assert toy_op(torch.zeros(3)) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert toy_op(torch.zeros(3)) == "torch"  # once per reason: no second warning


def test_auto_falls_back_on_dtype_and_names_it(toy_op):
    with pytest.warns(RuntimeWarning, match="dtype float64"):
        assert toy_op(torch.zeros(4, dtype=torch.float64)) == "torch"


def test_explicit_backend_that_cannot_serve_raises(toy_op):
    with pytest.raises(BackendError, match="`x` has odd width 3"):
        toy_op(torch.zeros(3), backend="native")
    with pytest.raises(BackendError, match="supports float32"):
        toy_op(torch.zeros(4, dtype=torch.float64), backend="native")
    with pytest.raises(BackendError, match="not implemented for this op; available: 'torch', 'native'"):
        toy_op(torch.zeros(4), backend="triton")


def test_unknown_backend_name_is_a_value_error_naming_backend(toy_op):
    with pytest.raises(ValueError, match="argument `backend` must be one of"):
        toy_op(torch.zeros(4), backend="cuda")
    with pytest.raises(ValueError, match="argument `backend`"):
        kernels.set_default_backend("fast")


def test_context_manager_and_process_default(toy_op):
    with kernels.use_backend("torch"):
        assert toy_op(torch.zeros(4)) == "torch"
        assert toy_op(torch.zeros(4), backend="native") == "native"  # an explicit argument wins
        with kernels.use_backend("native"):
            assert toy_op(torch.zeros(4)) == "native"
        assert toy_op(torch.zeros(4)) == "torch"
    assert toy_op(torch.zeros(4)) == "native"
    kernels.set_default_backend("torch")
    try:
        assert kernels.get_default_backend() == "torch"
        assert toy_op(torch.zeros(4)) == "torch"
    finally:
        kernels.set_default_backend("auto")


def test_table_lists_every_op_and_backend():
    rows = kernels.backend_table()
    ops = {row["op"] for row in rows}
    assert {"residual_add", "layer_norm", "rms_norm", "masked_softmax", "attention", "linear", "feed_forward"} <= ops
    native = [row for row in rows if row["op"] == "residual_add" and row["backend"] == "native"]
    assert native and "cpu" in native[0]["usable here"]


def test_python_m_kernels_prints_the_table():
    out = subprocess.run([sys.executable, "-m", "kernels"], capture_output=True, text=True, check=True).stdout
    assert "kernels._C: built with" in out
    assert "residual_add" in out and "native" in out and "triton" in out


def test_plans_are_cached_per_call_kind_and_cleared_when_the_op_changes(toy_op):
    assert toy_op(torch.zeros(4)) == "native"
    assert ("auto", "cpu", torch.float32) in _backend._REGISTRY["toy"].plans
    _backend.set_auto_order("toy", "cpu", ())  # no fast backend: auto runs the reference
    assert toy_op(torch.zeros(4)) == "torch"
    _backend.set_auto_order("toy", "cpu", ("native",))
    assert toy_op(torch.zeros(4)) == "native"
    _backend.register(Implementation("toy", "native", lambda x: x, {"cpu": (torch.float64,)},
                                     native_op="residual_add"))  # replaced: no fp32 any more
    with pytest.warns(RuntimeWarning, match="dtype float32"):
        assert toy_op(torch.zeros(4)) == "torch"
