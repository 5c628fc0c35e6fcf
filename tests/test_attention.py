"""kernels.scaled_dot_product_attention on every backend usable here, against the fp64 reference (testing.md's
tolerance rule) and against F.scaled_dot_product_attention. CPU shapes are small (Triton runs under the interpreter);
dropout is tests/test_attention_dropout.py's, the GPU tier at realistic sizes tests/test_attention_gpu.py's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _attention_cases import CASES, FAST, attention, check, ids, qkv

import kernels
from kernels import BackendError, _backend, reference
from kernels.testing import assert_close, check_against_reference


# ----------------------------------------------------------------------------------------------------------------------
# Shapes, causal, cross-attention, dtypes
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.interpret
@pytest.mark.parametrize("case", CASES, ids=ids)
@pytest.mark.parametrize("sq,sk,is_causal", [(1, 1, True), (17, 17, True), (17, 45, False), (17, 45, True),
                                             (45, 17, False), (45, 17, True)])
def test_lengths_cross_and_causal(case, sq, sk, is_causal):
    device, backend = case
    check(backend, *qkv(2, 2, sq, sk, 32, device=device), is_causal=is_causal)


@pytest.mark.interpret
@pytest.mark.parametrize("case", FAST, ids=ids)
@pytest.mark.parametrize("head_dim", [40, 64, 80, 96, 128, 256])  # 16 and 32: in the other tests
def test_head_dims(case, head_dim):
    device, backend = case
    check(backend, *qkv(1, 1, 33, 40, head_dim, device=device), is_causal=head_dim % 32 == 0)


@pytest.mark.interpret
@pytest.mark.parametrize("case", FAST, ids=ids)
@pytest.mark.parametrize("seqlen", [113, 203])
def test_odd_lengths(case, seqlen):
    device, backend = case
    check(backend, *qkv(1, 1, seqlen, seqlen, 16, device=device), is_causal=True)


@pytest.mark.slow
@pytest.mark.parametrize("case", FAST, ids=ids)
@pytest.mark.parametrize("sq,sk", [(1023, 17), (17, 1023)])
def test_length_1023(case, sq, sk):
    """1023 along each axis on the CPU (1023 x 1023 is in the GPU tier)."""
    device, backend = case
    check(backend, *qkv(1, 1, sq, sk, 16, device=device))


@pytest.mark.interpret
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_fp16(case):
    device, backend = case
    check(backend, *qkv(2, 2, 33, 47, 32, device=device, dtype=torch.float16), is_causal=True)


@pytest.mark.interpret
@pytest.mark.parametrize("case", FAST, ids=ids)
def test_fp16_large_magnitudes(case):
    """Scores of a few thousand (x20 inputs) overflow fp16 if formed in fp16; the kernels form them in fp32."""
    device, backend = case
    q, k, v = qkv(1, 2, 33, 33, 64, device=device, dtype=torch.float16, scale=20.0)
    out = check(backend, q, k, v)
    assert torch.isfinite(out).all()


@pytest.mark.interpret
@pytest.mark.parametrize("case", CASES, ids=ids)
@pytest.mark.parametrize("kv_heads", [1, 2])
def test_gqa_and_mqa(case, kv_heads):
    device, backend = case
    check(backend, *qkv(2, 4, 17, 37, 32, device=device, kv_heads=kv_heads), is_causal=kv_heads == 2,
          enable_gqa=True)


# ----------------------------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------------------------

MASK_SHAPES = {"full": (2, 2, 20, 70), "per-batch": (2, 1, 20, 70), "keys": (1, 2, 1, 70), "2d": (20, 70)}


@pytest.mark.interpret
@pytest.mark.parametrize("case", CASES, ids=ids)
@pytest.mark.parametrize("shape,kind", [("full", "bool"), ("per-batch", "bool"), ("keys", "bool"), ("2d", "bool"),
                                        ("full", "additive"), ("keys", "additive")])
def test_attn_mask_broadcast(case, shape, kind):
    device, backend = case
    if kind == "bool":
        mask = torch.rand(MASK_SHAPES[shape], device=device) > 0.4
        mask[..., 32:64] = False  # a whole key block masked (skipped by the kernels)
        mask[..., :32] = True  # and one with nothing masked
    else:
        mask = torch.randn(MASK_SHAPES[shape], device=device)
        mask[..., 32:64] = float("-inf")
    check(backend, *qkv(2, 2, 20, 70, 32, device=device), attn_mask=mask)


@pytest.mark.interpret
@pytest.mark.parametrize("case", CASES, ids=ids)
@pytest.mark.parametrize("is_causal", [False, True])
def test_key_padding_mask_and_combinations(case, is_causal):
    device, backend = case
    padding = torch.rand(2, 70, device=device) > 0.7
    padding[1, 40:] = True
    mask = torch.rand(20, 70, device=device) > 0.3
    check(backend, *qkv(2, 2, 20, 70, 32, device=device), attn_mask=mask, is_causal=is_causal,
          key_padding_mask=padding)


@pytest.mark.interpret
@pytest.mark.parametrize("case", CASES, ids=ids)
@pytest.mark.parametrize("kind", ["bool", "additive", "padding"])
def test_fully_masked_rows_give_zeros_and_zero_gradients(case, kind):
    device, backend = case
    q, k, v = qkv(2, 2, 33, 40, 32, device=device)
    kwargs = {}
    if kind == "padding":
        padding = torch.rand(2, 40, device=device) > 0.5
        padding[1] = True  # batch 1: every key is padding
        kwargs["key_padding_mask"] = padding
        dead = (slice(1, 2), slice(None), slice(None))
    else:
        keep = torch.rand(2, 2, 33, 40, device=device) > 0.3
        keep[:, :, 5] = False
        keep[:, :, 20:] = False  # rows 20.. of the second query block: all masked
        dead = (slice(None), slice(None), [5, *range(20, 33)])
        kwargs["attn_mask"] = keep if kind == "bool" else torch.zeros(keep.shape, device=device).masked_fill(
            ~keep, float("-inf"))
    out = check(backend, q, k, v, **kwargs)
    assert torch.equal(out[dead], torch.zeros_like(out[dead]))
    grad, = torch.autograd.grad(attention(backend, q, k, v, **kwargs).sum(), q)
    assert torch.equal(grad[dead], torch.zeros_like(grad[dead]))


@pytest.mark.interpret
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_no_keys(case):
    """Sk = 0: every row is fully masked, so zeros (SDPA gives NaN there)."""
    device, backend = case
    q, k, v = qkv(1, 2, 5, 0, 16, device=device)
    out = attention(backend, q, k, v)
    assert torch.equal(out, torch.zeros_like(out))
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert torch.equal(grads[0], torch.zeros_like(q)) and grads[1].shape == k.shape


@pytest.mark.interpret
@pytest.mark.parametrize("case", CASES, ids=ids)
@pytest.mark.parametrize("shape", [(0, 2, 5, 5), (1, 2, 0, 5)])
def test_empty(case, shape):
    device, backend = case
    batch, heads, sq, sk = shape
    q, k, v = qkv(batch, heads, sq, sk, 16, device=device)
    out = attention(backend, q, k, v)
    assert out.shape == q.shape
    grads = torch.autograd.grad(out.sum(), (q, k, v), allow_unused=True)
    assert all(g is None or g.shape == t.shape for g, t in zip(grads, (q, k, v)))


# ----------------------------------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.interpret
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_packed_qkv_projection(case):
    """q, k, v as strided views of one (B, S, 3, H, D) projection, the common layout of a fused qkv linear."""
    device, backend = case
    packed = torch.randn(2, 37, 3, 2, 32, device=device)
    q, k, v = (packed[:, :, i].transpose(1, 2).requires_grad_(False) for i in range(3))
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    assert not q.is_contiguous()
    check(backend, q, k, v, is_causal=True)


@pytest.mark.interpret
@pytest.mark.parametrize("case", FAST, ids=ids)
def test_transposed_and_sliced_inputs(case):
    device, backend = case
    q = torch.randn(1, 2, 32, 40, device=device).transpose(-1, -2).detach().requires_grad_(True)  # head dim stride
    k = torch.randn(1, 2, 90, 32, device=device)[:, :, ::2].detach().requires_grad_(True)  # every other key
    v = torch.randn(1, 4, 45, 32, device=device)[:, ::2].detach().requires_grad_(True)  # every other head
    check(backend, q, k, v)


@pytest.mark.interpret
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_three_dimensional_inputs(case):
    """(H, S, D) inputs like SDPA's unbatched form."""
    device, backend = case
    q, k, v = (t[0].detach().requires_grad_(True) for t in qkv(1, 2, 17, 19, 16, device=device))
    check(backend, q, k, v, is_causal=True)


# ----------------------------------------------------------------------------------------------------------------------
# Against F.scaled_dot_product_attention, on inputs SDPA accepts
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.interpret
@pytest.mark.parametrize("case", CASES, ids=ids)
@pytest.mark.parametrize("variant", ["plain", "causal", "bool mask", "additive mask", "gqa", "scale"])
def test_matches_torch_sdpa(case, variant):
    device, backend = case
    q, k, v = qkv(2, 4, 21, 21 if variant == "causal" else 35, 32, device=device,
                  kv_heads=2 if variant == "gqa" else None, grad=False)
    kwargs = {"plain": {}, "causal": {"is_causal": True}, "gqa": {"enable_gqa": True}, "scale": {"scale": 0.3},
              "bool mask": {"attn_mask": torch.rand(21, 35, device=device) > 0.5},
              "additive mask": {"attn_mask": torch.randn(2, 1, 21, 35, device=device)}}[variant]
    out = attention(backend, q, k, v, **kwargs)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), **{
        key: (value.double() if isinstance(value, torch.Tensor) and value.is_floating_point() else value)
        for key, value in kwargs.items()})
    expected = torch.nan_to_num(expected)  # rows SDPA leaves NaN when a bool mask drops every key are zeros here
    assert_close(out, expected)


# ----------------------------------------------------------------------------------------------------------------------
# Backward: determinism
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.interpret
@pytest.mark.parametrize("case", FAST, ids=ids)
def test_backward_is_deterministic(case):
    device, backend = case
    q, k, v = qkv(1, 4, 40, 40, 16, device=device, kv_heads=1)
    grad = torch.randn(1, 4, 40, 16, device=device)
    first = torch.autograd.grad(attention(backend, q, k, v, is_causal=True, enable_gqa=True), (q, k, v), grad)
    second = torch.autograd.grad(attention(backend, q, k, v, is_causal=True, enable_gqa=True), (q, k, v), grad)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


# ----------------------------------------------------------------------------------------------------------------------
# Negative control: the checker must catch a kernel that ignores a mask
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.interpret
@pytest.mark.parametrize("case", FAST, ids=ids)
def test_negative_control_mask_ignored(case):
    device, backend = case
    padding = torch.rand(2, 40, device=device) > 0.5

    def mask_ignored(q, k, v, key_padding_mask=None):
        return attention(backend, q, k, v)

    with pytest.raises(AssertionError, match="output"):
        check_against_reference(mask_ignored, reference.scaled_dot_product_attention,
                                *qkv(2, 2, 17, 40, 16, device=device), key_padding_mask=padding)


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs name the argument; backend selection
# ----------------------------------------------------------------------------------------------------------------------

def _bad_inputs():
    q = torch.randn(2, 4, 8, 16)
    k = torch.randn(2, 4, 10, 16)
    v = torch.randn(2, 4, 10, 16)
    return [
        ("q not a tensor", dict(q=q.tolist()), TypeError, "`q`"),
        ("q 2-D", dict(q=q[0, 0]), ValueError, "`q`"),
        ("k head dim", dict(k=k[..., :8]), ValueError, "`k`"),
        ("k dtype", dict(k=k.double()), ValueError, "`k`"),
        ("v length", dict(v=v[:, :, :9]), ValueError, "`v`"),
        ("gqa without enable_gqa", dict(k=k[:, :2], v=v[:, :2]), ValueError, "`k`.*enable_gqa"),
        ("gqa heads not dividing", dict(k=k[:, :3], v=v[:, :3], enable_gqa=True), ValueError, "`k`"),
        ("mask shape", dict(attn_mask=torch.ones(8, 11, dtype=torch.bool)), ValueError, "`attn_mask`"),
        ("mask dtype", dict(attn_mask=torch.ones(8, 10, dtype=torch.int32)), ValueError, "`attn_mask`"),
        ("padding shape", dict(key_padding_mask=torch.zeros(2, 9, dtype=torch.bool)), ValueError,
         "`key_padding_mask`"),
        ("padding dtype", dict(key_padding_mask=torch.zeros(2, 10)), ValueError, "`key_padding_mask`"),
        ("dropout", dict(dropout_p=1.0), ValueError, "`dropout_p`"),
        ("scale", dict(scale="big"), ValueError, "`scale`"),
        ("backend", dict(backend="cuda"), ValueError, "`backend`"),
    ], dict(q=q, k=k, v=v)


@pytest.mark.parametrize("bad", _bad_inputs()[0], ids=[b[0] for b in _bad_inputs()[0]])
def test_bad_inputs_name_the_argument(bad):
    _, change, error, match = bad
    arguments = {**_bad_inputs()[1], **change}
    with pytest.raises(error, match=match):
        kernels.scaled_dot_product_attention(**arguments)


@pytest.mark.interpret
@pytest.mark.skipif(not FAST, reason="no fast attention backend here")
def test_unsupported_calls_fall_back_or_raise():
    device, backend = FAST[0]
    q, k, v = qkv(1, 1, 3, 3, 264, device=device, grad=False)
    with pytest.raises(BackendError, match="`q`"):
        attention(backend, q, k, v)
    saved = _backend._REGISTRY["attention"].auto_order[device]
    _backend.set_auto_order("attention", device, (backend,))
    try:
        with pytest.warns(RuntimeWarning, match="`q`"):
            out = kernels.scaled_dot_product_attention(q, k, v)  # "auto": falls back to torch, saying why
    finally:
        _backend.set_auto_order("attention", device, saved)
    assert_close(out, reference.scaled_dot_product_attention(q.double(), k.double(), v.double()))
    mask = torch.zeros(3, 3, device=device, requires_grad=True)
    with pytest.raises(BackendError, match="`attn_mask`"):
        attention(backend, *qkv(1, 1, 3, 3, 16, device=device), attn_mask=mask)


# ----------------------------------------------------------------------------------------------------------------------
# torch.library: opcheck and torch.compile
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.interpret
@pytest.mark.skipif(not any(b == "triton" for _, b in FAST), reason="triton backend not usable here")
def test_opcheck_triton():
    """Every optional input present (broadcast mask view, padding, dropout seed), causal, GQA."""
    from kernels._ops import attention_triton  # noqa: F401  (registers the ops)

    device = [d for d, b in FAST if b == "triton"][0]
    q, k, v = qkv(1, 2, 5, 7, 16, device=device, kv_heads=1)
    mask = (torch.rand(5, 7, device=device) > 0.3).expand(1, 2, 5, 7)
    padding = torch.zeros(1, 7, dtype=torch.bool, device=device)
    torch.library.opcheck(torch.ops.kernels.triton_attention.default,
                          (q, k, v, mask, padding, 0.2, True, 0.25, torch.tensor([11])))


@pytest.mark.interpret
@pytest.mark.parametrize("case", FAST, ids=ids)
def test_compile_fullgraph_traces_through(case):
    device, backend = case
    q, k, v = qkv(1, 2, 9, 9, 16, device=device)
    padding = torch.zeros(1, 9, dtype=torch.bool, device=device)

    def step(q, k, v):
        return kernels.scaled_dot_product_attention(q, k, v, is_causal=True, key_padding_mask=padding,
                                                    backend=backend)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    assert_close(compiled(q, k, v), reference.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), is_causal=True))


# ----------------------------------------------------------------------------------------------------------------------
# The block map the Triton kernels skip tiles by
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not kernels._backend._triton_importable(), reason="triton not installed")
def test_block_map_labels():
    from kernels.triton.attention import FULL, PARTIAL, SKIP, block_map

    keep = torch.ones(64, 96, dtype=torch.bool)
    keep[:32, 32:64] = False  # tile (0, 1): all masked
    keep[:32, 70] = False  # tile (0, 2): partly
    labels = block_map(keep.expand(2, 3, 64, 96), None, 2, 3, 64, 96, 32, 32)
    assert labels.shape == (2, 3, 2, 3) and labels.stride()[:2] == (0, 0)  # broadcast, not materialised
    assert labels[0, 0].tolist() == [[FULL, SKIP, PARTIAL], [FULL, FULL, FULL]]
    additive = torch.zeros(64, 96).masked_fill(~keep, float("-inf"))
    additive[40, 5] = 0.5  # a finite bias is mask work too
    labels = block_map(additive.expand(2, 3, 64, 96), None, 2, 3, 64, 96, 32, 32)
    assert labels[1, 2].tolist() == [[FULL, SKIP, PARTIAL], [PARTIAL, FULL, FULL]]
    padding = torch.zeros(2, 90, dtype=torch.bool)
    padding[1, 64:] = True  # the last (partial) key tile of batch 1: all padding
    padding[0, 3] = True
    labels = block_map(None, padding, 2, 3, 64, 90, 32, 32)
    assert labels[:, 0, 0].tolist() == [[PARTIAL, FULL, FULL], [FULL, FULL, SKIP]]


def _common_case_calls():
    q, k, v = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 6)
    padding = torch.zeros(2, 5, dtype=torch.bool)
    return [
        dict(q=q, k=k, v=v),
        dict(q=q, k=k, v=v, is_causal=1, scale=2, dropout_p=0),
        dict(q=q, k=k, v=v, dropout_p=0.25, scale=0.5, key_padding_mask=padding),
        dict(q=q, k=k[:, :2], v=v[:, :2], enable_gqa=True),
        dict(q=q, k=k[:, :2], v=v[:, :2]),  # GQA heads without enable_gqa: an error
        dict(q=q, k=k[:, :3], v=v[:, :3], enable_gqa=True),  # 3 does not divide 4
        dict(q=q, k=k, v=v, attn_mask=torch.ones(3, 5, dtype=torch.bool)),  # masks take the full path
        dict(q=q, k=k, v=v, key_padding_mask=padding.float()),
        dict(q=q, k=k, v=v, key_padding_mask=padding[:, :4]),
        dict(q=q, k=k.double(), v=v),
        dict(q=q.int(), k=k.int(), v=v.int()),
        dict(q=q, k=k[..., :4], v=v),
        dict(q=q, k=k, v=v[:, :, :4]),
        dict(q=q[0], k=k[0], v=v[0]),  # 3-D: batch shape ()
        dict(q=q, k=k, v=v, scale=float("inf")),
        dict(q=q, k=k, v=v, scale=True),
        dict(q=q, k=k, v=v, dropout_p=1.0),
        dict(q=q, k=k, v=v, dropout_p=float("nan")),
        dict(q=torch.nn.Parameter(q), k=k, v=v),
        dict(q=q[..., :0], k=k[..., :0], v=v),
    ]


@pytest.mark.parametrize("index", range(len(_common_case_calls())))
def test_common_case_fast_path_agrees_with_the_full_checks(index):
    """The fast path of the common call gives the arguments the full normalisation gives, or declines (None) and
    leaves the call, and its error, to the full checks."""
    from kernels._attention_args import _common_case, normalize_attention_args

    call = _common_case_calls()[index]
    full = dict(attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False, key_padding_mask=None)
    full.update(call)
    fast = _common_case(**full)
    try:
        expected = normalize_attention_args(**full)
    except (TypeError, ValueError):
        assert fast is None
        return
    if fast is not None:
        assert len(fast) == len(expected)
        for got, want in zip(fast, expected):
            assert got is want or got == want, (got, want)
            assert type(got) is type(want)
