"""kernels.layer_norm / kernels.rms_norm with NaN and ±Inf planted in each input, on every backend usable here,
against F.layer_norm / F.rms_norm (README, non-finite values): a NaN in a row gives a NaN row (±Inf: NaN for layer
norm, NaN at the Inf and zeros elsewhere for RMS norm, as torch), a non-finite weight/bias element reaches its column,
and the backward follows. NaN placement is compared element by element, the finite elements by value."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels.testing import available_devices, backends_for

# CUDA cases belong to the GPU tier (marker `gpu`).
BACKENDS = [pytest.param(d, b, id=f"{d}-{b}", marks=[pytest.mark.gpu] if d == "cuda" else [])
            for d in available_devices() for b in ["torch"] + backends_for("layer_norm", d)]
NAN, INF = float("nan"), float("inf")
VALUES = pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
# Row lengths: rows held on chip, and (Triton under the interpreter, native) looped / chunked rows.
LENGTHS = [37, 5000]


def _run(device, backend, rms, x, residual, weight, bias, dy):
    """(outputs, gradients) of the backend, or of torch's own op when backend is None, on copies of the inputs."""
    leaves = [t.clone().to(device).requires_grad_(True) if t is not None else None for t in (x, residual, weight, bias)]
    xl, rl, wl, bl = leaves
    n = x.shape[-1]
    if backend is None:
        h = xl if rl is None else xl + rl
        y = F.rms_norm(h, (n,), wl, eps=1e-6) if rms else F.layer_norm(h, (n,), wl, bl, eps=1e-5)
    elif rms:
        y = kernels.rms_norm(xl, (n,), wl, eps=1e-6, residual=rl, backend=backend)
    else:
        y = kernels.layer_norm(xl, (n,), wl, bl, eps=1e-5, residual=rl, backend=backend)
    if isinstance(y, tuple):
        y = y[0]
    y.backward(dy.to(device))
    return y, [leaf.grad for leaf in leaves if leaf is not None]


def _compare(device, backend, rms, x, residual=None, weight=None, bias=None, dy=None, exact_grads=True):
    """The backend against torch: NaN placement of y (and of the gradients; with ``exact_grads`` False, where an Inf
    in a parameter sends ±inf through the backward's row sums and whether an element ends as NaN or ±inf depends on
    the order of the terms, the placement of the non-finite gradient elements), and the finite values."""
    dy = torch.randn_like(x) if dy is None else dy
    bias = None if rms else bias
    y, grads = _run(device, backend, rms, x, residual, weight, bias, dy)
    y_ref, grads_ref = _run("cpu", None, rms, x, residual, weight, bias, dy)
    for name, a, b in [("y", y, y_ref)] + [(f"grad {i}", g, r) for i, (g, r) in enumerate(zip(grads, grads_ref))]:
        a = a.cpu()
        bad = (lambda t: t.isnan()) if exact_grads or name == "y" else (lambda t: ~t.isfinite())
        assert torch.equal(bad(a), bad(b)), (
            f"{name}: non-finite at {bad(a).nonzero().tolist()[:8]}, torch at {bad(b).nonzero().tolist()[:8]}")
        finite = ~bad(b)
        torch.testing.assert_close(a[finite], b[finite], atol=2e-4, rtol=1e-3, msg=name)
    return y.cpu(), [g.cpu() for g in grads]


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("n", LENGTHS)
@VALUES
def test_in_x(device, backend, rms, n, value):
    """NaN/±Inf in one element of x (with weight and bias): the row as torch gives it, the other rows finite."""
    x = torch.randn(3, n)
    x[1, n // 2] = value
    y, grads = _compare(device, backend, rms, x, weight=torch.randn(n), bias=torch.randn(n))
    if value != value or not rms:
        assert y[1].isnan().all()
    assert not y[[0, 2]].isnan().any() and not grads[0][[0, 2]].isnan().any()


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
@VALUES
def test_in_residual(device, backend, rms, value):
    """NaN/±Inf in the residual enters h = x + residual: as torch on x + residual."""
    x, residual = torch.randn(4, 37), torch.randn(4, 37)
    residual[2, 5] = value
    y, _ = _compare(device, backend, rms, x, residual=residual, weight=torch.randn(37))
    assert not y[[0, 1, 3]].isnan().any()


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("where", ["weight", "bias"])
@VALUES
def test_in_parameters(device, backend, rms, where, value):
    """A non-finite weight or bias element reaches its column only (and the gradients as torch's)."""
    if rms and where == "bias":
        pytest.skip("rms_norm has no bias")
    weight, bias = torch.randn(37), torch.randn(37)
    (weight if where == "weight" else bias)[7] = value
    y, _ = _compare(device, backend, rms, torch.randn(4, 37), weight=weight, bias=bias, exact_grads=value != value)
    assert not y[:, [c for c in range(37) if c != 7]].isnan().any()


@pytest.mark.interpret
@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
@pytest.mark.parametrize("n", LENGTHS)
def test_nan_in_grad(device, backend, rms, n):
    """A NaN in a row of dy gives a NaN row of dx and NaN in dweight / dbias; the other rows of dx stay finite."""
    dy = torch.randn(3, n)
    dy[0, 3] = NAN
    _, grads = _compare(device, backend, rms, torch.randn(3, n), weight=torch.randn(n), bias=torch.randn(n), dy=dy)
    assert grads[0][0].isnan().all() and not grads[0][1:].isnan().any()
    assert grads[1].isnan().any()
