"""Attention dropout on every fast backend usable here: the reference with the same keep-mask, reproducibility from
torch's seed, the keep probability, and the documented Philox formula of the keep-mask."""

from __future__ import annotations

import pytest
import torch
from _attention_cases import FAST, attention, check, ids, keep_mask_for_next_call, qkv

import kernels
from kernels.testing import available_devices

@pytest.mark.interpret
@pytest.mark.parametrize("case", FAST, ids=ids)
@pytest.mark.parametrize("is_causal", [False, True])
def test_dropout_matches_reference_with_the_same_keep_mask(case, is_causal):
    device, backend = case
    q, k, v = qkv(1, 2, 33, 40, 32, device=device, kv_heads=1)
    keep = keep_mask_for_next_call(7, (1, 2, 33, 40), 0.25, device)
    check(backend, q, k, v, dropout_p=0.25, is_causal=is_causal, enable_gqa=True, dropout_mask=keep)


@pytest.mark.interpret
@pytest.mark.parametrize("case", FAST, ids=ids)
def test_dropout_reproducible_from_torch_seed(case):
    device, backend = case
    q, k, v = qkv(1, 2, 17, 33, 16, device=device, grad=False)
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        runs.append(attention(backend, q, k, v, dropout_p=0.5))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


@pytest.mark.interpret
@pytest.mark.parametrize("dropout_p", [0.1, 0.5])
def test_dropout_keep_probability(dropout_p):
    """131072 Philox draws: the kept fraction is within 5 standard deviations of 1 - p, and no row or column
    pattern (the first and second halves of the key range keep alike)."""
    from kernels.triton.attention import dropout_keep_mask

    device = available_devices()[-1]
    keep = dropout_keep_mask(1234, (2, 2, 64, 512), dropout_p, device=device).double()
    sigma = (dropout_p * (1 - dropout_p) / keep.numel()) ** 0.5
    assert abs(keep.mean().item() - (1 - dropout_p)) < 5 * sigma
    halves = keep[..., :256].mean() - keep[..., 256:].mean()
    assert abs(halves.item()) < 10 * sigma
    assert not torch.equal(keep[0, 0], keep[0, 1])  # heads draw different masks


def philox_uniform(seed: int, offset: int) -> float:
    """The keep-mask draw of the module docstring of kernels.triton.attention, in plain Python (Philox4x32-10,
    key = seed, counter = (offset low, offset high, 0, 0), first word to [0, 1) like tl.rand)."""
    word = 0xFFFFFFFF
    k0, k1, c0, c1, c2, c3 = seed & word, seed >> 32, offset & word, offset >> 32, 0, 0
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & word, p1 & word, ((p0 >> 32) ^ c3 ^ k1) & word, p0 & word
        k0, k1 = (k0 + 0x9E3779B9) & word, (k1 + 0xBB67AE85) & word
    x = c0 - (1 << 32) if c0 >= 1 << 31 else c0
    return float(torch.tensor((~x if x < 0 else x), dtype=torch.float32) * torch.tensor(4.6566127342e-10))


@pytest.mark.interpret
@pytest.mark.skipif(not kernels._backend._triton_importable(), reason="triton not installed")
def test_keep_mask_follows_the_documented_formula():
    """The formula the native backend reproduces: offset = ((b * H + h) * Sq + i) * Sk + j."""
    from kernels.triton.attention import dropout_keep_mask

    device = available_devices()[-1]
    seed, shape, p = 987654321, (2, 3, 5, 7), 0.4
    keep = dropout_keep_mask(seed, shape, p, device=device).cpu()
    expected = torch.tensor([philox_uniform(seed, index) >= p for index in range(keep.numel())]).reshape(shape)
    assert torch.equal(keep, expected)
