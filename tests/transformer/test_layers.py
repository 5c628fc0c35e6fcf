"""The fused encoder/decoder layers and stacks against torch.nn: swapped nn.Transformer / nn.TransformerEncoder,
natively built modules, initialisation and state_dict round trips."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import transformer
from _transformer_checks import check_module, leaf

D, H, FF = 16, 2, 24


def _swapped(model):
    fused = copy.deepcopy(model)
    transformer.swap(fused)
    return fused


@pytest.mark.parametrize("norm_first,activation,batch_first", [
    (False, "relu", False), (True, "gelu", True), (False, nn.GELU(approximate="tanh"), True),
    (True, lambda x: x * torch.sigmoid(x), False)])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_swapped_nn_transformer_matches(norm_first, activation, batch_first, mode):
    torch.manual_seed(0)
    model = nn.Transformer(D, H, 1, 1, FF, dropout=0.0, activation=activation, batch_first=batch_first,
                           norm_first=norm_first).train(mode == "train")
    fused = _swapped(model)
    src0, tgt0 = torch.randn(3, 7, D, dtype=torch.float64), torch.randn(3, 5, D, dtype=torch.float64)
    if not batch_first:
        src0, tgt0 = src0.transpose(0, 1), tgt0.transpose(0, 1)  # non-contiguous (S, B, D) views
    src_padding = torch.zeros(3, 7, dtype=torch.bool)
    src_padding[1, 4:] = True
    tgt_padding = torch.zeros(3, 5, dtype=torch.bool)
    tgt_padding[2, 3:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(5)

    def make_call(dtype):
        def call(module):
            src, tgt = leaf(src0, dtype), leaf(tgt0, dtype)
            out = module(src, tgt, tgt_mask=causal.to(dtype), src_key_padding_mask=src_padding,
                         tgt_key_padding_mask=tgt_padding, memory_key_padding_mask=src_padding)
            return out, [src, tgt]
        return call

    check_module(fused, model, make_call)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("mask", ["bool", "float"])
def test_swapped_nn_encoder_with_padding_masks(mode, mask):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(D), enable_nested_tensor=True).train(mode == "train")
    fused = _swapped(model)
    lengths = torch.tensor([9, 4, 1, 7])
    padding = torch.arange(9)[None, :] >= lengths[:, None]  # (B, S), True = padding
    x0 = torch.randn(4, 9, D, dtype=torch.float64)

    def make_call(dtype):
        def call(module):
            x = leaf(x0, dtype)
            pm = padding if mask == "bool" else torch.zeros(padding.shape, dtype=dtype).masked_fill(padding, -1e9)
            return module(x, src_key_padding_mask=pm), [x]
        return call

    check_module(fused, model, make_call)
    if mode == "eval":  # torch's nested-tensor fast path (no grad) zeroes padded rows: compare real rows only
        with torch.no_grad():
            x = x0.float()
            expected, got = model.float()(x, src_key_padding_mask=padding), fused(x, src_key_padding_mask=padding)
        keep = ~padding
        torch.testing.assert_close(got[keep], expected[keep], atol=1e-5, rtol=1e-5)


def test_encoder_causal_detection_and_is_causal():
    torch.manual_seed(0)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, norm_first=True), 1,
                                  enable_nested_tensor=False)
    fused = _swapped(model)
    x0 = torch.randn(6, 2, D, dtype=torch.float64)
    causal = nn.Transformer.generate_square_subsequent_mask(6)

    def make_call(dtype):
        def call(module):
            x = leaf(x0, dtype)
            return module(x, mask=causal.to(dtype)), [x]
        return call

    check_module(fused, model, make_call)


@pytest.mark.parametrize("norm_first", [False, True])
def test_native_modules_initialise_and_compute_like_nn(norm_first):
    kwargs = dict(d_model=D, nhead=H, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=FF, dropout=0.0,
                  norm_first=norm_first, activation="gelu", bias=False)
    torch.manual_seed(3)
    reference = nn.Transformer(**kwargs)
    torch.manual_seed(3)
    fused = transformer.Transformer(**kwargs)
    assert list(fused.state_dict()) == list(reference.state_dict())
    for (name, a), b in zip(fused.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    src0, tgt0 = torch.randn(4, 2, D, dtype=torch.float64), torch.randn(3, 2, D, dtype=torch.float64)

    def make_call(dtype):
        def call(module):
            src, tgt = leaf(src0, dtype), leaf(tgt0, dtype)
            return module(src, tgt, tgt_mask=module.generate_square_subsequent_mask(3, dtype=dtype)), [src, tgt]
        return call

    check_module(fused, reference, make_call)


def test_state_dict_round_trips_between_fused_and_nn():
    torch.manual_seed(0)
    reference = nn.TransformerDecoderLayer(D, H, FF, dropout=0.0, activation=F.gelu)
    fused = transformer.TransformerDecoderLayer(D, H, FF, dropout=0.0, activation=F.gelu)
    fused.load_state_dict(reference.state_dict())
    back = nn.TransformerDecoderLayer(D, H, FF, dropout=0.0, activation=F.gelu)
    back.load_state_dict(fused.state_dict())
    for (name, a), b in zip(reference.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name
    tgt, memory = torch.randn(3, 2, D), torch.randn(4, 2, D)
    torch.testing.assert_close(fused(tgt, memory), reference(tgt, memory))


def test_training_dropout_is_random_and_eval_is_deterministic():
    layer = transformer.TransformerEncoderLayer(D, H, FF, dropout=0.5, batch_first=True)
    x = torch.randn(2, 5, D)
    assert not torch.equal(layer(x), layer(x))
    layer.eval()
    assert torch.equal(layer(x), layer(x))


def test_decoder_cached_steps_match_the_full_decoder():
    torch.manual_seed(0)
    model = transformer.Transformer(D, H, 1, 2, FF, dropout=0.0, batch_first=True, norm_first=True).double().eval()
    memory = torch.randn(2, 6, D, dtype=torch.float64)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[0, 4:] = True
    tgt = torch.randn(2, 4, D, dtype=torch.float64)
    causal = torch.ones(4, 4, dtype=torch.bool).triu(1)
    full = model.decoder(tgt, memory, tgt_mask=causal, memory_key_padding_mask=padding)
    cache = model.decoder.new_cache()
    steps = [model.decoder.forward_cached(tgt[:, i:i + 1], memory, cache, padding) for i in range(4)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


LAYER_BAD_INPUTS = {  # (the argument the error must name, the layer's forward arguments besides src / tgt)
    "encoder (1, S) src_mask": ("src_mask", dict(src_mask=torch.zeros(1, 5, dtype=torch.bool))),
    "encoder 1-D src_mask": ("src_mask", dict(src_mask=torch.zeros(5, dtype=torch.bool))),
    "encoder src_key_padding_mask (B, S + 1)": (
        "src_key_padding_mask", dict(src_key_padding_mask=torch.zeros(2, 6, dtype=torch.bool))),
    "decoder memory of another batch": ("memory", dict(memory=torch.randn(3, 4, D))),
    "decoder memory_mask (L, S + 1)": ("memory_mask", dict(memory_mask=torch.zeros(5, 5, dtype=torch.bool))),
    "decoder tgt_mask 1-D": ("tgt_mask", dict(tgt_mask=torch.zeros(5, dtype=torch.bool))),
    "decoder memory_key_padding_mask (S,)": (
        "memory_key_padding_mask", dict(memory_key_padding_mask=torch.zeros(4, dtype=torch.bool))),
}


@pytest.mark.parametrize("case", list(LAYER_BAD_INPUTS))
def test_layers_reject_bad_inputs_like_torch_naming_the_argument(case):
    name, kwargs = LAYER_BAD_INPUTS[case]
    decoder = case.startswith("decoder")
    cls = "TransformerDecoderLayer" if decoder else "TransformerEncoderLayer"
    reference = getattr(nn, cls)(D, H, FF, dropout=0.0, batch_first=True)
    fused = getattr(transformer, cls)(D, H, FF, dropout=0.0, batch_first=True)
    call = dict(tgt=torch.randn(2, 5, D), memory=torch.randn(2, 4, D)) if decoder else dict(src=torch.randn(2, 5, D))
    call.update(kwargs)
    with pytest.raises(Exception) as torch_error:
        reference(**call)
    with pytest.raises(ValueError, match=f"`{name}`") as error:
        fused(**call)
    assert isinstance(error.value, type(torch_error.value))


@pytest.mark.parametrize("norm_first", [False, True])
def test_subclasses_overriding_torchs_block_methods_compute_like_torchs(norm_first):
    """torch's tests subclass the layers and override _sa_block / _mha_block / _ff_block: the fused layers keep those
    methods (torch's signatures) and compose an overridden one as torch does."""
    def subclass(base):
        class Scaled(base):
            def _ff_block(self, x):
                return 0.5 * super()._ff_block(x)
        return Scaled

    torch.manual_seed(0)
    for cls in ("TransformerEncoderLayer", "TransformerDecoderLayer"):
        reference = subclass(getattr(nn, cls))(D, H, FF, dropout=0.0, norm_first=norm_first).double()
        fused = subclass(getattr(transformer, cls))(D, H, FF, dropout=0.0, norm_first=norm_first).double()
        assert fused._custom_blocks and not getattr(transformer, cls)._custom_blocks
        fused.load_state_dict(reference.state_dict())
        x, memory = torch.randn(5, 2, D, dtype=torch.float64), torch.randn(4, 2, D, dtype=torch.float64)
        args = (x, memory) if cls == "TransformerDecoderLayer" else (x,)
        torch.testing.assert_close(fused(*args), reference(*args))
        plain = getattr(transformer, cls)(D, H, FF, dropout=0.0, norm_first=norm_first).double()
        plain.load_state_dict(reference.state_dict())
        assert not torch.allclose(plain(*args), reference(*args))  # the override does change the result
