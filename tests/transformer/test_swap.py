"""transformer.swap / unswap: in place, same Parameter objects, optimizer state, include/exclude, report, dtype and
device moves, torch.compile."""

import copy

import pytest
import torch
from torch import nn

import transformer
from transformer.swap import SwapReport

D, H, FF = 16, 2, 24


class Model(nn.Module):
    """A user's model: embeddings, an nn.TransformerEncoder, a final nn.LayerNorm, an nn.MultiheadAttention pooler."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, D)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True), 2,
                                             enable_nested_tensor=False)
        self.norm = nn.LayerNorm(D)
        self.rms = nn.RMSNorm(D)
        self.pool = nn.MultiheadAttention(D, H, batch_first=True)
        self.head = nn.Linear(D, 3)

    def forward(self, tokens, padding):
        x = self.rms(self.norm(self.encoder(self.embed(tokens), src_key_padding_mask=padding)))
        pooled, _ = self.pool(x[:, :1], x, x, key_padding_mask=padding)
        return self.head(pooled[:, 0])


def _inputs():
    tokens = torch.randint(0, 50, (3, 6))
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[0, 3:] = True
    return tokens, padding


def test_swap_is_in_place_keeps_parameters_and_outputs():
    torch.manual_seed(0)
    model = Model().double()
    tokens, padding = _inputs()
    expected = model(tokens, padding)
    before = dict(model.named_parameters())
    keys = list(model.state_dict())
    report = transformer.swap(model)
    assert isinstance(report, SwapReport)
    assert type(model.encoder) is transformer.TransformerEncoder
    assert type(model.encoder.layers[1]) is transformer.TransformerEncoderLayer
    assert type(model.encoder.layers[1].self_attn) is transformer.MultiheadAttention
    assert type(model.norm) is transformer.LayerNorm and type(model.rms) is transformer.RMSNorm
    assert type(model.pool) is transformer.MultiheadAttention
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(tokens, padding), expected)
    text = str(report)
    assert "encoder.layers.0" in text and "nn.MultiheadAttention -> transformer.MultiheadAttention" in text
    assert len(report.swapped) == 2 * 4 + 1 + 3  # per layer: itself, attention, 2 norms; the stack; 3 modules


def test_optimizer_state_stays_valid_across_swap():
    torch.manual_seed(0)
    model = Model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens, padding = _inputs()
    model(tokens, padding).sum().backward()
    optimizer.step()
    transformer.swap(model)
    weight = model.encoder.layers[0].linear1.weight
    snapshot = weight.detach().clone()
    optimizer.zero_grad()
    model(tokens, padding).sum().backward()
    optimizer.step()
    assert not torch.equal(weight, snapshot)  # the optimizer updates the model's (same) parameters
    assert optimizer.state[weight]["step"] == 2


def test_unswap_restores_torch_classes_with_the_same_parameters():
    torch.manual_seed(0)
    model = Model()
    reference = copy.deepcopy(model)
    before = dict(model.named_parameters())
    transformer.swap(model)
    report = transformer.unswap(model)
    assert len(report.swapped) == 12
    for (name, a), b in zip(model.named_modules(), reference.modules()):
        assert type(a) is type(b), name
    assert all(p is before[n] for n, p in model.named_parameters())
    tokens, padding = _inputs()
    model.eval()
    reference.eval()
    with torch.no_grad():  # torch's own fast paths are back
        torch.testing.assert_close(model(tokens, padding)[1:], reference(tokens, padding)[1:])


def test_include_exclude_and_report_reasons():
    model = Model()
    report = transformer.swap(model, include=[nn.LayerNorm, "pool"], exclude=["encoder.layers.1.*"])
    assert type(model.norm) is transformer.LayerNorm and type(model.pool) is transformer.MultiheadAttention
    assert type(model.encoder.layers[0].norm1) is transformer.LayerNorm
    assert type(model.encoder.layers[1].norm1) is nn.LayerNorm  # excluded by name
    assert type(model.encoder.layers[0]) is nn.TransformerEncoderLayer  # not included
    assert type(model.rms) is nn.RMSNorm
    reasons = {name: reason for name, _, reason in report.left}
    assert reasons["encoder.layers.1.norm1"] == "excluded" and reasons["rms"] == "not included"
    tokens, padding = _inputs()
    assert model(tokens, padding).shape == (3, 3)


def test_layer_with_an_excluded_norm_still_computes_right():
    torch.manual_seed(0)
    model = Model().double()
    tokens, padding = _inputs()
    expected = model(tokens, padding)
    transformer.swap(model, exclude=[nn.LayerNorm])
    assert type(model.encoder.layers[0]) is transformer.TransformerEncoderLayer
    assert type(model.encoder.layers[0].norm1) is nn.LayerNorm
    torch.testing.assert_close(model(tokens, padding), expected)


def test_subclasses_are_left_alone_and_root_is_swapped_in_place():
    class MyNorm(nn.LayerNorm):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(MyNorm(D), nn.LayerNorm(D))
    report = transformer.swap(model)
    assert type(model[0]) is MyNorm and type(model[1]) is transformer.LayerNorm
    assert "subclass" in report.left[0][2]

    root = nn.TransformerEncoderLayer(D, H, FF, dropout=0.0)
    x = torch.randn(4, 2, D)
    expected = root(x)
    transformer.swap(root)
    assert type(root) is transformer.TransformerEncoderLayer
    torch.testing.assert_close(root(x), expected)


def test_backend_is_set_and_validated():
    model = Model()
    transformer.swap(model, backend="torch")
    assert model.encoder.layers[0].self_attn.backend == "torch" and model.norm.backend == "torch"
    with pytest.raises(ValueError, match="`backend`"):
        transformer.swap(Model(), backend="cuda")


@pytest.mark.parametrize("order", ["swap_then_move", "move_then_swap"])
def test_swap_before_or_after_a_dtype_move(order):
    torch.manual_seed(0)
    model = Model()
    reference = copy.deepcopy(model).double()
    if order == "swap_then_move":
        transformer.swap(model)
        model.double()
    else:
        model.double()
        transformer.swap(model)
    assert model.encoder.layers[0].self_attn.in_proj_weight.dtype == torch.float64
    tokens, padding = _inputs()
    torch.testing.assert_close(model(tokens, padding), reference(tokens, padding))


@pytest.mark.parametrize("order", ["swap_then_compile", "compile_then_swap"])
def test_swap_with_torch_compile(order):
    torch.manual_seed(0)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True), 1,
                                  enable_nested_tensor=False)
    x = torch.randn(2, 5, D)
    padding = torch.zeros(2, 5, dtype=torch.bool)
    padding[1, 3:] = True
    expected = model(x, src_key_padding_mask=padding)
    torch._dynamo.reset()
    if order == "swap_then_compile":
        transformer.swap(model)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    else:
        compiled = torch.compile(model, backend="aot_eager")
        compiled(x, src_key_padding_mask=padding)
        transformer.swap(compiled)
    out = compiled(x, src_key_padding_mask=padding)
    assert type(model.layers[0]) is transformer.TransformerEncoderLayer
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert model.layers[0].linear1.weight.grad is not None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_swapped_encoder_on_cuda_in_low_precision(dtype):
    """GPU tier: a swapped padded encoder in bf16/fp16 holds the tolerance rule (2x plain PyTorch's error against
    fp32), forward and parameter gradients, eager and under torch.compile(fullgraph=True)."""
    from _transformer_checks import assert_like_torch

    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(256, 8, 1024, dropout=0.0, batch_first=True, norm_first=True)
    base = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).cuda()
    x = torch.randn(4, 200, 256, device="cuda")
    padding = torch.arange(200, device="cuda")[None] >= torch.tensor([200, 150, 77, 3], device="cuda")[:, None]
    grad = torch.randn_like(x)

    def run(model, dtype):
        out = model(x.to(dtype), src_key_padding_mask=padding)
        out.backward(grad.to(dtype))
        return out.float(), {n: p.grad.float() for n, p in model.named_parameters()}

    ref_out, ref_grads = run(copy.deepcopy(base), torch.float32)
    torch_out, torch_grads = run(copy.deepcopy(base).to(dtype), dtype)
    for compile_it in (False, True):
        fused = copy.deepcopy(base).to(dtype)
        transformer.swap(fused)
        model = torch.compile(fused, fullgraph=True) if compile_it else fused
        out, grads = run(model, dtype)
        keep = ~padding
        assert_like_torch(out[keep], ref_out[keep], torch_out[keep])
        for name in ref_grads:
            assert_like_torch(grads[name], ref_grads[name], torch_grads[name], gradient=True, name=name)


def test_hugging_face_models_inside_any_module_go_to_transformer_hf():
    """A transformers model held by a plain nn.Module is swapped by transformer.hf (blocks by instance, attention by
    AttentionInterface) and unswapped back; tests/hf covers the families in depth."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                      num_attention_heads=2, attn_implementation="sdpa")
    holder = nn.Sequential(transformers.LlamaModel(config))
    mlp_class = type(holder[0].layers[0].mlp)
    report = transformer.swap(holder)
    targets = {row[2] for row in report.swapped}
    assert {"transformer.hf.FusedLlamaMLP", "transformer.hf.FusedLlamaRMSNorm", "attention 'fused_kernels'"} <= targets
    transformer.unswap(holder)
    assert type(holder[0].layers[0].mlp) is mlp_class
    assert holder[0].config._attn_implementation == "sdpa"
