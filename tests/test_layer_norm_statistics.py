"""The statistics the native CPU layer norm / RMS norm save for the backward (mean and rstd, fp32 for fp32 and bf16
inputs) against fp64: a few ulp, as torch's (2-3 half-ulps in rstd here; ours up to ~3 with AVX-512 and, emulated,
up to ~6 on bf16 inputs with AVX2, whose 8-lane sums run longer: on a coarse grid their roundings do not average
out). Every term of the weight gradient dy * (h - mean) * rstd carries their rounding, and a gradient summed over
many rows meets the fixed fp32 table only when they are this close (the earlier one-pass statistics, shifted by the
row's first element, were 12-38 half-ulps off in rstd; see test_native_fp32_weight_gradient_over_many_rows in
tests/properties/test_layer_norm_properties.py)."""

import os

import pytest
import torch

import kernels  # noqa: F401  (registers torch.ops.kernels)

# tests/sanitize.sh runs these kernels built with ASan / UBSan (the runtime preloaded), whose instrumented loops sum in
# another order: the same rows came out 6-48 half-ulps off in rstd there. The accuracy held here is the normal
# build's (-O3, vectorised sums).
pytestmark = pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                                reason="tests/sanitize.sh: the instrumented build's sums round differently")

ULP = 2.0 ** -24  # half an ulp of 1 in fp32: the relative rounding of one operation
EPS = 1e-5


def _rows(n, offset, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(256, n, generator=generator, dtype=torch.float64) * 2 + offset).to(dtype)


def _statistics(x, rms):
    """(mean, rstd) saved by the native forward, and fp64 ones from the same (rounded) inputs."""
    _, _, mean, rstd = torch.ops.kernels.layer_norm_forward(x, None, None, None, EPS, rms)
    x64 = x.double()
    ref_mean = torch.zeros(x.shape[0], dtype=torch.float64) if rms else x64.mean(1)
    ref_var = x64.square().mean(1) if rms else x64.var(1, unbiased=False)
    return mean, rstd, ref_mean, ref_var


def _check(x, rms, rstd_half_ulps):
    mean, rstd, ref_mean, ref_var = _statistics(x, rms)
    ref_rstd = (ref_var + EPS).rsqrt()
    rstd_error = ((rstd.double() - ref_rstd).abs() / ref_rstd).max().item()
    assert rstd_error <= rstd_half_ulps * ULP, f"rstd: relative error {rstd_error / ULP:.1f} half-ulps"
    if not rms:
        # The mean's own rounding (half an ulp of |mean|) and a few half-ulps of the spread (torch: up to ~3; the
        # earlier one-pass statistics: ~9).
        allowed = ULP * ref_mean.abs() + 6 * ULP * ref_var.sqrt()
        excess = ((mean.double() - ref_mean).abs() - allowed).max().item()
        assert excess <= 0, f"mean: off by {excess:.3g} more than allowed"


@pytest.mark.parametrize("rms", [False, True], ids=["layer_norm", "rms_norm"])
@pytest.mark.parametrize("n", [768, 4097, 5000])  # one chunk; the sums of two and more chunks added
@pytest.mark.parametrize("offset", [0.0, 3.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_statistics_within_a_few_ulp(rms, n, offset, dtype):
    # The earlier one-pass statistics: 12-38 (fp32) and 30-85 (bf16) half-ulps in rstd.
    _check(_rows(n, offset, dtype, seed=n), rms, rstd_half_ulps=5 if dtype == torch.float32 else 8)


@pytest.mark.parametrize("row", ["sorted", "outliers first"])
def test_native_statistics_when_the_first_elements_mislead(row):
    """The shift of the statistics is sampled from a row's first elements: far from the mean here, which takes the
    second pass around the first pass's mean."""
    x = _rows(1000, 0.0, torch.float32, seed=1)
    if row == "sorted":
        x = x.sort(dim=1).values
    else:
        x[:, :40] += 30.0
    _check(x, rms=False, rstd_half_ulps=5)


def test_native_statistics_fp64():
    x = _rows(1000, 3.0, torch.float64, seed=0)
    mean, rstd, ref_mean, ref_var = _statistics(x, rms=False)
    torch.testing.assert_close(mean, ref_mean, atol=1e-14, rtol=1e-14)
    torch.testing.assert_close(rstd, (ref_var + EPS).rsqrt(), atol=0, rtol=1e-14)
