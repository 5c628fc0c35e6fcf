"""kernels._C.fast's attention calls (csrc/autograd/fast_attention.cpp): on the CPU the common calls of
scaled_dot_product_attention, attention_with_kv_cache and varlen_attention give exactly what the Python path gives
(outputs and gradients), and every other call takes the Python path (None)."""

import pytest
import torch

import kernels
from kernels._ops import _fast

pytestmark = pytest.mark.skipif(_fast._FAST is None, reason="kernels._C is not built")


def _python_path(monkeypatch):
    monkeypatch.setattr(_fast, "usable", lambda backend: False)


def _same_with_gradients(monkeypatch, call, inputs):
    """``call()`` through the fast call and through the Python path: outputs and input gradients bit for bit."""
    def run():
        out = call()
        grad = torch.linspace(-1, 1, out.numel()).view(out.shape).to(out.dtype)
        return (out, *torch.autograd.grad(out, inputs, grad))

    fast = run()
    _python_path(monkeypatch)
    for got, expected in zip(fast, run()):
        assert got.shape == expected.shape and torch.equal(got, expected)


def _qkv(shape_q, shape_k, dtype=torch.float32, grad=True):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(shape_q, generator=generator, dtype=dtype)
    k = torch.randn(shape_k, generator=generator, dtype=dtype)
    v = torch.randn(shape_k, generator=generator, dtype=dtype)
    return [t.requires_grad_(grad) for t in (q, k, v)]


@pytest.mark.parametrize("shape_q, shape_k, gqa", [((2, 4, 7, 16), (2, 4, 9, 16), False),
                                                   ((1, 4, 1, 32), (1, 2, 41, 32), True),
                                                   ((2, 2, 5, 8), (2, 2, 5, 8), False)])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_attention_fast_call_is_the_python_path(monkeypatch, shape_q, shape_k, gqa, is_causal, padding, scale):
    q, k, v = _qkv(shape_q, shape_k)
    key_padding = None
    if padding:
        key_padding = torch.zeros(shape_k[0], shape_k[2], dtype=torch.bool)
        key_padding[-1, -2:] = True
    assert _fast.attention(q, k, v, None, 0.0, is_causal, scale, gqa, key_padding) is not None
    _same_with_gradients(monkeypatch, lambda: kernels.scaled_dot_product_attention(
        q, k, v, is_causal=is_causal, scale=scale, enable_gqa=gqa, key_padding_mask=key_padding), [q, k, v])


def _mask(kind, batch, heads, sq, sk):
    """An attn_mask of ``kind`` (its shape, then ``-additive`` for a float mask with -inf where bool's is False) that
    broadcasts to (B, H, Sq, Sk), with a fully masked query row where it has rows."""
    shape = {"full": (batch, heads, sq, sk), "rows": (sq, sk), "batch_rows": (batch, 1, sq, sk), "key_row": (1, sk),
             "three_dims": (heads, sq, sk)}[kind.split("-")[0]]
    generator = torch.Generator().manual_seed(1)
    keep = torch.rand(shape, generator=generator) > 0.3
    keep[..., 0] = True
    if len(shape) > 2 or shape[0] > 1:
        keep.view(-1, sk)[0] = False  # the first query row of the first (batch, head) sees no key
    if kind.endswith("additive"):
        return torch.where(keep, torch.randn(shape, generator=generator), float("-inf"))
    return keep


@pytest.mark.parametrize("kind", ["full", "rows", "batch_rows", "key_row", "three_dims", "full-additive",
                                  "rows-additive", "key_row-additive"])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("padding", [False, True])
def test_attention_fast_call_with_a_mask_is_the_python_path(monkeypatch, kind, is_causal, padding):
    shape_q, shape_k = (2, 4, 7, 16), (2, 2, 9, 16)
    q, k, v = _qkv(shape_q, shape_k)
    mask = _mask(kind, 2, 4, 7, 9)
    key_padding = torch.zeros(2, 9, dtype=torch.bool) if padding else None
    if padding:
        key_padding[1, -3:] = True
    assert _fast.attention(q, k, v, mask, 0.0, is_causal, None, True, key_padding) is not None
    _same_with_gradients(monkeypatch, lambda: kernels.scaled_dot_product_attention(
        q, k, v, mask, is_causal=is_causal, enable_gqa=True, key_padding_mask=key_padding), [q, k, v])


def test_attention_fast_call_on_strided_cache_slices(monkeypatch):
    q, k, v = _qkv((1, 2, 1, 16), (1, 2, 40, 16), grad=False)
    k, v = k[:, :, :23], v.transpose(1, 2).contiguous().transpose(1, 2)[:, :, :23]  # a cache's valid part
    fast = kernels.scaled_dot_product_attention(q, k, v)
    _python_path(monkeypatch)
    assert torch.equal(fast, kernels.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("case", ["mask_grad", "mask_dtype", "mask_int", "mask_shape", "mask_dims", "mask_bias",
                                  "mask_list", "dropout", "causal_int", "gqa_off", "head_dim_v", "head_dim_300",
                                  "three_dims", "batch", "padding_float", "padding_shape", "scale_nan",
                                  "scale_tensor", "half_on_cpu", "subclass"])
def test_attention_any_other_call_takes_the_python_path(case):
    q, k, v = _qkv((2, 4, 5, 8), (2, 4, 6, 8), grad=False)

    class Sub(torch.Tensor):
        pass

    args = {"q": q, "k": k, "v": v, "mask": None, "dropout": 0.0, "causal": False, "scale": None, "gqa": False,
            "padding": None}
    args.update({
        "mask_grad": {"mask": torch.zeros(5, 6, requires_grad=True)}, "mask_dtype": {"mask": torch.zeros(5, 6).double()},
        "mask_int": {"mask": torch.ones(5, 6, dtype=torch.int32)}, "mask_shape": {"mask": torch.ones(5, 5, dtype=torch.bool)},
        "mask_dims": {"mask": torch.ones(1, 2, 4, 5, 6, dtype=torch.bool)},
        "mask_bias": {"mask": torch.nn.attention.bias.causal_lower_right(5, 6)}, "mask_list": {"mask": [[True] * 6] * 5},
        "dropout": {"dropout": 0.1}, "causal_int": {"causal": 1},
        "gqa_off": {"k": k[:, :2], "v": v[:, :2]}, "head_dim_v": {"v": torch.randn(2, 4, 6, 4)},
        "head_dim_300": {"q": torch.randn(2, 4, 5, 300), "k": torch.randn(2, 4, 6, 300), "v": torch.randn(2, 4, 6, 300)},
        "three_dims": {"q": q[0], "k": k[0], "v": v[0]}, "batch": {"k": k[:1], "v": v[:1]},
        "padding_float": {"padding": torch.zeros(2, 6)}, "padding_shape": {"padding": torch.zeros(2, 5, dtype=torch.bool)},
        "scale_nan": {"scale": float("nan")}, "scale_tensor": {"scale": torch.tensor(0.5)},
        "half_on_cpu": {"q": q.half(), "k": k.half(), "v": v.half()}, "subclass": {"v": v.as_subclass(Sub)},
    }[case])
    assert _fast.attention(args["q"], args["k"], args["v"], args["mask"], args["dropout"], args["causal"],
                           args["scale"], args["gqa"], args["padding"]) is None


@pytest.mark.parametrize("seqlens", [None, [41, 17], "int64"])
@pytest.mark.parametrize("is_causal", [True, False])
def test_kv_cache_fast_call_is_the_python_path(monkeypatch, seqlens, is_causal):
    q, k_cache, v_cache = _qkv((2, 4, 1, 32), (2, 2, 48, 32))
    lengths = None
    if seqlens is not None:
        lengths = torch.tensor([41, 17] if seqlens == "int64" else seqlens,
                               dtype=torch.int64 if seqlens == "int64" else torch.int32)
    assert _fast.attention_with_kv_cache(q, k_cache, v_cache, lengths, is_causal, None) is not None
    _same_with_gradients(monkeypatch, lambda: kernels.attention_with_kv_cache(
        q, k_cache, v_cache, cache_seqlens=lengths, is_causal=is_causal), [q, k_cache, v_cache])


def test_kv_cache_several_causal_queries_take_the_python_path():
    q, k_cache, v_cache = _qkv((1, 2, 3, 16), (1, 2, 10, 16), grad=False)
    lengths = torch.tensor([7], dtype=torch.int32)
    assert _fast.attention_with_kv_cache(q, k_cache, v_cache, lengths, True, None) is None
    assert _fast.attention_with_kv_cache(q, k_cache, v_cache, lengths, False, None) is not None
    assert _fast.attention_with_kv_cache(q, k_cache, v_cache, lengths.float(), False, None) is None


@pytest.mark.parametrize("offsets_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_varlen_fast_call_is_the_python_path(monkeypatch, offsets_dtype, is_causal, kv_heads):
    q, k, v = _qkv((13, 4, 16), (13, kv_heads, 16))
    cu = torch.tensor([0, 8, 13], dtype=offsets_dtype)
    assert _fast.varlen_attention(q, k, v, cu, cu, 8, 8, is_causal, None, 0.0) is not None
    _same_with_gradients(monkeypatch, lambda: kernels.varlen_attention(q, k, v, cu, cu, 8, 8, is_causal=is_causal),
                         [q, k, v])


@pytest.mark.parametrize("case", ["dropout", "max_bool", "max_negative", "offsets_float", "offsets_2d",
                                  "offsets_count", "four_dims", "heads"])
def test_varlen_any_other_call_takes_the_python_path(case):
    q, k, v = _qkv((13, 4, 16), (13, 4, 16), grad=False)
    cu = torch.tensor([0, 8, 13], dtype=torch.int32)
    args = {"q": q, "k": k, "v": v, "cu_q": cu, "cu_k": cu, "max_q": 8, "max_k": 8, "dropout": 0.0}
    args.update({
        "dropout": {"dropout": 0.2}, "max_bool": {"max_q": True}, "max_negative": {"max_k": -1},
        "offsets_float": {"cu_k": cu.float()}, "offsets_2d": {"cu_q": cu[None]}, "offsets_count": {"cu_k": cu[:2]},
        "four_dims": {"q": q[None], "k": k[None], "v": v[None]}, "heads": {"k": k[:, :3], "v": v[:, :3]},
    }[case])
    assert _fast.varlen_attention(args["q"], args["k"], args["v"], args["cu_q"], args["cu_k"], args["max_q"],
                                  args["max_k"], False, None, args["dropout"]) is None


def test_attention_served_only_where_auto_runs_native():
    q, k, v = _qkv((1, 2, 4, 8), (1, 2, 4, 8), grad=False)
    from kernels import _backend

    order = _backend._REGISTRY["attention"].auto_order["cpu"]
    _backend.set_auto_order("attention", "cpu", ())
    try:
        assert _fast.attention(q, k, v, None, 0.0, False, None, False, None) is None
    finally:
        _backend.set_auto_order("attention", "cpu", order)
    assert _fast.attention(q, k, v, None, 0.0, False, None, False, None) is not None
