"""transformer.MultiheadAttention against nn.MultiheadAttention: every mask combination, need_weights, layouts."""

import itertools

import pytest
import torch
from torch import nn

import kernels
import transformer
from _transformer_checks import check_module, leaf

E, H, L = 16, 2, 5


def _masks(kind, kpm_kind, batch):
    attn_mask = None
    # True = ignore; key 0 always takes part and is never padding: no fully masked row (torch gives NaN there)
    if kind == "bool":
        attn_mask = torch.rand(L, L) > 0.6
        attn_mask[:, 0] = False
    elif kind == "float":
        attn_mask = torch.randn(L, L, dtype=torch.float64)
    elif kind == "bool3d":
        attn_mask = (torch.rand(batch * H, L, L) > 0.6)
        attn_mask[:, :, 0] = False
    elif kind == "causal":
        attn_mask = torch.ones(L, L, dtype=torch.bool).triu(1)
    kpm = None
    if kpm_kind == "bool":
        kpm = torch.zeros(batch, L, dtype=torch.bool)
        kpm[0, L - 2:] = True
    elif kpm_kind == "float":
        kpm = torch.randn(batch, L, dtype=torch.float64)
    return attn_mask, kpm


def _cast(mask, dtype):
    return None if mask is None or mask.dtype == torch.bool else mask.to(dtype)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("mask_kind,kpm_kind,weights", list(itertools.product(
    ["none", "bool", "float", "bool3d", "causal"], ["none", "bool", "float"], ["no", "average", "per_head"])))
def test_matches_nn_in_every_mask_combination(mask_kind, kpm_kind, weights):
    batch = 3
    batch_first = weights != "average"  # both layouts, without doubling the grid
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(E, H, batch_first=batch_first)
    fused = transformer.MultiheadAttention(E, H, batch_first=batch_first)
    fused.load_state_dict(reference.state_dict())
    attn_mask, kpm = _masks(mask_kind, kpm_kind, batch)
    is_causal = mask_kind == "causal" and weights == "no"
    x = torch.randn((batch, L, E) if batch_first else (L, batch, E), dtype=torch.float64)

    def make_call(dtype):
        def call(module):
            q = leaf(x, dtype)
            am = attn_mask if attn_mask is None or attn_mask.dtype == torch.bool else attn_mask.to(dtype)
            pm = kpm if kpm is None or kpm.dtype == torch.bool else kpm.to(dtype)
            out, w = module(q, q, q, key_padding_mask=pm, attn_mask=am, need_weights=weights != "no",
                            average_attn_weights=weights == "average", is_causal=is_causal)
            return (out, w), [q]
        return call

    for mode in ("train", "eval"):  # dropout 0: the same numbers; eval exercises torch's fast paths
        reference.train(mode == "train")
        fused.train(mode == "train")
        check_module(fused, reference, make_call)


@pytest.mark.parametrize("kdim,vdim,bias", [(None, None, False), (7, 9, True), (7, 9, False)])
def test_cross_attention_kdim_vdim_bias(kdim, vdim, bias):
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=True)
    fused = transformer.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=True)
    assert list(fused.state_dict()) == list(reference.state_dict())
    fused.load_state_dict(reference.state_dict())
    q0 = torch.randn(2, 4, E, dtype=torch.float64)
    k0 = torch.randn(2, 7, kdim or E, dtype=torch.float64)
    v0 = torch.randn(2, 7, vdim or E, dtype=torch.float64)
    kpm = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])

    def make_call(dtype):
        def call(module):
            q, k, v = leaf(q0, dtype), leaf(k0, dtype), leaf(v0, dtype)
            return module(q, k, v, key_padding_mask=kpm, need_weights=False), [q, k, v]
        return call

    check_module(fused, reference, make_call)


def test_same_parameters_and_initialisation_as_nn():
    torch.manual_seed(1)
    reference = nn.MultiheadAttention(E, H, add_bias_kv=True)
    torch.manual_seed(1)
    fused = transformer.MultiheadAttention(E, H, add_bias_kv=True)
    assert list(fused.state_dict()) == list(reference.state_dict())
    for (name, a), (_, b) in zip(fused.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("add_bias_kv,add_zero_attn", [(True, False), (False, True), (True, True)])
def test_bias_kv_and_zero_attn_fall_back_to_the_reference(add_bias_kv, add_zero_attn):
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(E, H, add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn)
    fused = transformer.MultiheadAttention(E, H, add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn)
    fused.load_state_dict(reference.state_dict())
    x0 = torch.randn(L, 2, E, dtype=torch.float64)
    kpm = torch.tensor([[False] * L, [False] * 3 + [True] * 2])

    def make_call(dtype):
        def call(module):
            x = leaf(x0, dtype)
            return module(x, x, x, key_padding_mask=kpm), [x]
        return call

    check_module(fused, reference, make_call)


@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input(batch_first):
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(E, H, batch_first=batch_first)
    fused = transformer.MultiheadAttention(E, H, batch_first=batch_first)
    fused.load_state_dict(reference.state_dict())
    x0 = torch.randn(L, E, dtype=torch.float64)
    kpm = torch.tensor([False] * 3 + [True] * 2)
    mask = (torch.rand(H, L, L) > 0.5)
    mask[:, :, 0] = False

    def make_call(dtype):
        def call(module):
            x = leaf(x0, dtype)
            return module(x, x, x, key_padding_mask=kpm, attn_mask=mask, average_attn_weights=False), [x]
        return call

    check_module(fused, reference, make_call)


def test_need_weights_goes_through_masked_softmax(monkeypatch):
    calls = []
    original = kernels.masked_softmax

    def spy(*args, **kwargs):
        calls.append(kwargs.get("backend"))
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "masked_softmax", spy)
    mha = transformer.MultiheadAttention(E, H)
    x = torch.randn(L, 2, E)
    _, weights = mha(x, x, x)
    assert len(calls) == 1 and weights.shape == (2, L, L)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, L))
    mha(x, x, x, need_weights=False)
    assert len(calls) == 1


def test_fully_masked_rows_give_zeros_not_nan():
    mha = transformer.MultiheadAttention(E, H, batch_first=True, bias=False)
    x = torch.randn(2, L, E)
    kpm = torch.zeros(2, L, dtype=torch.bool)
    kpm[1] = True  # every key of sample 1 is padding
    out, weights = mha(x, x, x, key_padding_mask=kpm)
    assert not out.isnan().any() and not weights.isnan().any()
    assert torch.equal(out[1], torch.zeros_like(out[1]))  # no bias: the output projection of zeros


def test_bad_inputs_name_the_argument():
    mha = transformer.MultiheadAttention(E, H)
    x = torch.randn(L, 2, E)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        mha(x, x, x, is_causal=True)
    with pytest.raises(ValueError, match="`key_padding_mask`"):
        mha(x, x, x, key_padding_mask=torch.zeros(2, L, dtype=torch.long))


def test_negative_control_a_dropped_padding_mask_fails_the_check(monkeypatch):
    """The checker must catch a wrong module: here attention that ignores key_padding_mask."""
    original = kernels.scaled_dot_product_attention

    def wrong(*args, key_padding_mask=None, **kwargs):
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "scaled_dot_product_attention", wrong)
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(E, H)
    fused = transformer.MultiheadAttention(E, H)
    fused.load_state_dict(reference.state_dict())
    x0 = torch.randn(L, 2, E, dtype=torch.float64)
    kpm = torch.tensor([[False] * L, [False] * 2 + [True] * 3])

    def make_call(dtype):
        def call(module):
            x = leaf(x0, dtype)
            return module(x, x, x, key_padding_mask=kpm, need_weights=False), [x]
        return call

    with pytest.raises(AssertionError, match="output 0"):
        check_module(fused, reference, make_call)


def test_cached_attention_matches_full_causal_attention():
    torch.manual_seed(0)
    mha = transformer.MultiheadAttention(E, H, batch_first=True).double().eval()
    x = torch.randn(2, 6, E, dtype=torch.float64)
    full = mha.attend(x)
    cache = transformer.multihead_attention.AttentionCache()
    steps = [mha.attend(x[:, :3], cache)] + [mha.attend(x[:, i:i + 1], cache) for i in range(3, 6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full)
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)
    torch.testing.assert_close(full, mha(x, x, x, attn_mask=causal, need_weights=False)[0])


# -- argument checks: every input torch's module rejects is rejected, before any kernel runs, naming the argument ---

N, S = 2, 3  # batch, key length (L = 5 queries)

BAD_INPUTS = {  # name -> (the argument the error must name, kwargs of forward with batch_first=True)
    "1-D attn_mask": ("attn_mask", dict(attn_mask=torch.zeros(S, dtype=torch.bool))),
    "(1, S) attn_mask with L > 1": ("attn_mask", dict(attn_mask=torch.zeros(1, S, dtype=torch.bool))),
    "(L, S + 1) attn_mask": ("attn_mask", dict(attn_mask=torch.zeros(L, S + 1))),
    "4-D attn_mask": ("attn_mask", dict(attn_mask=torch.zeros(N, H, L, S, dtype=torch.bool))),
    "3-D attn_mask of N heads": ("attn_mask", dict(attn_mask=torch.zeros(N, L, S, dtype=torch.bool))),
    "int attn_mask": ("attn_mask", dict(attn_mask=torch.zeros(L, S, dtype=torch.int64))),
    "key_padding_mask (N, S + 1)": ("key_padding_mask", dict(key_padding_mask=torch.zeros(N, S + 1, dtype=torch.bool))),
    "key_padding_mask (S,)": ("key_padding_mask", dict(key_padding_mask=torch.zeros(S, dtype=torch.bool))),
    "key_padding_mask (N + 1, S)": ("key_padding_mask", dict(key_padding_mask=torch.zeros(N + 1, S, dtype=torch.bool))),
    "int key_padding_mask": ("key_padding_mask", dict(key_padding_mask=torch.zeros(N, S, dtype=torch.int32))),
    "2-D key with 3-D query": ("key", dict(key=torch.randn(S, E))),
    "key of another batch size": ("key", dict(key=torch.randn(N + 1, S, E), value=torch.randn(N + 1, S, E))),
    "key of another width": ("key", dict(key=torch.randn(N, S, E + 1), value=torch.randn(N, S, E + 1))),
    "value of another length": ("value", dict(value=torch.randn(N, S + 1, E))),
    "query of another width": ("query", dict(query=torch.randn(N, L, E + 2))),
    "4-D query": ("query", dict(query=torch.randn(1, N, L, E))),
    "fp64 key with fp32 query": ("key", dict(key=torch.randn(N, S, E, dtype=torch.float64))),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_rejected_like_torch_before_any_kernel(case, monkeypatch):
    name, kwargs = BAD_INPUTS[case]
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(E, H, batch_first=True)
    fused = transformer.MultiheadAttention(E, H, batch_first=True)
    fused.load_state_dict(reference.state_dict())
    call = dict(query=torch.randn(N, L, E), key=torch.randn(N, S, E), value=torch.randn(N, S, E), need_weights=False)
    call.update(kwargs)
    with torch.no_grad(), pytest.raises(Exception):
        reference.eval()(**call)  # torch's fast path (eval, no grad) rejects it too
    with pytest.raises(Exception) as torch_error:
        reference.train()(**call)
    for op in ("linear", "scaled_dot_product_attention", "masked_softmax"):  # no kernel may run before the check
        monkeypatch.setattr(kernels, op, lambda *a, **k: pytest.fail("a kernel ran before the arguments were checked"))
    with pytest.raises(ValueError, match=f"`{name}`") as error:
        fused(**call)
    assert isinstance(error.value, type(torch_error.value)), (type(error.value), type(torch_error.value))


@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_inputs_checked_like_torch(batch_first):
    mha = transformer.MultiheadAttention(E, H, batch_first=batch_first)
    q, kv = torch.randn(L, E), torch.randn(S, E)
    mha(q, kv, kv, attn_mask=torch.zeros(H, L, S, dtype=torch.bool), key_padding_mask=torch.zeros(S, dtype=torch.bool))
    with pytest.raises(AssertionError, match="`key_padding_mask`"):
        mha(q, kv, kv, key_padding_mask=torch.zeros(1, S, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="`attn_mask`"):
        mha(q, kv, kv, attn_mask=torch.zeros(2 * H, L, S, dtype=torch.bool))
    with pytest.raises(ValueError, match="`key` and `value` to be 2-D"):
        mha(q, kv[None], kv[None])


def test_nested_inputs_and_torchscript_raise_clear_errors():
    mha = transformer.MultiheadAttention(E, H, batch_first=True)
    nested = torch.nested.nested_tensor([torch.randn(2, E), torch.randn(4, E)])
    with pytest.raises(ValueError, match="`query` is a nested tensor.*to_padded_tensor"):
        mha(nested, nested, nested)
    with pytest.raises(RuntimeError, match="torch.jit.script of transformer.multihead_attention.MultiheadAttention"):
        torch.jit.script(mha)
    with pytest.raises(RuntimeError, match="torch.jit.script of .*MultiheadAttention"):
        torch.jit.script(nn.Sequential(nn.Linear(E, E), mha))  # inside a model too


@pytest.mark.parametrize("batch_first", [False, True])
def test_fp16_in_proj_bias_with_fp64_inputs_is_cast(batch_first):
    """torch's batch-first path accepts biases in another dtype than the inputs; ours does in both layouts."""
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(E, H, batch_first=True).double()
    fused = transformer.MultiheadAttention(E, H, batch_first=batch_first).double()
    fused.load_state_dict(reference.state_dict())
    for module in (reference, fused):
        module.in_proj_bias.data = module.in_proj_bias.data.half()
    x = torch.randn(2, L, E, dtype=torch.float64, requires_grad=True)
    expected = reference(x, x, x, need_weights=False)[0]
    y = x if batch_first else x.transpose(0, 1)
    got = fused(y, y, y, need_weights=False)[0]
    torch.testing.assert_close(got if batch_first else got.transpose(0, 1), expected)
    got.sum().backward()
    assert fused.in_proj_bias.grad.dtype == torch.float16
