"""transformer.swap / unswap on Hugging Face models of every adapted family (transformer/hf/swap.py): outputs and
gradients within the tolerance rule, greedy generation with the cache, the same Parameter objects, unswap,
save_pretrained / from_pretrained, training, forced backends, and models of other families left and reported."""

import pytest
import torch
from _hf_models import (
    ENCODERS,
    FAMILIES,
    assert_within_rule,
    fp64_copy,
    model,
    padded_batch,
    transformers,
)
from torch import nn

import transformer
from kernels.testing import backends_for

DECODERS = tuple(f for f in FAMILIES if f not in ENCODERS)


def _labels(ids, mask):
    return ids.masked_fill(mask == 0, -100)


def _fused_names(m):
    return sorted(type(sub).__name__ for sub in m.modules() if type(sub).__name__.startswith("Fused"))


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_on_a_padded_batch(family):
    m = model(family)
    ids, mask = padded_batch(family)
    ref = fp64_copy(m)
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask).logits
        torch_out = m(ids, attention_mask=mask).logits
        report = transformer.swap(m)
        out = m(ids, attention_mask=mask).logits
    assert m.config._attn_implementation == "fused_kernels"
    assert len(report.swapped) >= 3 * 2 and report.left == [], str(report)
    assert_within_rule(out, torch_out, expected, valid=mask.bool())


@pytest.mark.parametrize("family", FAMILIES)
def test_training_step_gradients(family):
    m = model(family).train()  # dropout 0: the step is deterministic
    ids, mask = padded_batch(family)
    ref = fp64_copy(m)
    ref(ids, attention_mask=mask, labels=_labels(ids, mask)).loss.backward()
    m(ids, attention_mask=mask, labels=_labels(ids, mask)).loss.backward()
    torch_grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    transformer.swap(m)
    m(ids, attention_mask=mask, labels=_labels(ids, mask)).loss.backward()
    ref_params = dict(ref.named_parameters())
    for name, param in m.named_parameters():
        assert param.grad is not None, name
        assert_within_rule(param.grad, torch_grads[name], ref_params[name].grad, factor=3.0, atol=1e-6, name=name)


@pytest.mark.parametrize("family", DECODERS)
def test_greedy_generation_with_the_cache(family):
    # Left-padded (the padded decoding path) and unpadded (flash-decoding against the cache) batches.
    m = model(family)
    ids, mask = padded_batch(family)
    unpadded = ids[:1]  # the first row has no padding
    expected = [m.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0),
                m.generate(unpadded, max_new_tokens=6, do_sample=False, pad_token_id=0)]
    transformer.swap(m)
    out = [m.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0),
           m.generate(unpadded, max_new_tokens=6, do_sample=False, pad_token_id=0)]
    assert torch.equal(out[0], expected[0]) and torch.equal(out[1], expected[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_unswap_restores_classes_attention_and_parameters(family):
    m = model(family)
    classes = {name: type(sub) for name, sub in m.named_modules()}
    params = dict(m.named_parameters())
    keys = list(m.state_dict())
    optimizer = torch.optim.SGD(m.parameters(), lr=0.1)  # made before the swap: still the model's parameters
    transformer.swap(m)
    assert _fused_names(m), "nothing swapped"
    assert all(p is params[n] for n, p in m.named_parameters())
    assert list(m.state_dict()) == keys
    assert all(any(p is q for q in m.parameters()) for p in optimizer.param_groups[0]["params"])
    report = transformer.unswap(m)
    assert m.config._attn_implementation == "sdpa"
    assert {name: type(sub) for name, sub in m.named_modules()} == classes
    assert all(p is params[n] for n, p in m.named_parameters())
    assert not any(k.startswith("_fused_kernels") for sub in m.modules() for k in sub.__dict__)
    assert "attention 'sdpa'" in str(report)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_save_pretrained_from_pretrained_round_trip(family, tmp_path):
    m = model(family)
    ids, mask = padded_batch(family)
    keys = set(m.state_dict())
    transformer.swap(m)
    m.save_pretrained(tmp_path)
    loaded = type(m).from_pretrained(tmp_path).eval()
    assert set(loaded.state_dict()) == keys
    transformer.swap(loaded)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, attention_mask=mask).logits, m(ids, attention_mask=mask).logits)


def test_optimizer_steps_on_a_swapped_model_reduce_the_loss():
    m = model("llama").train()
    optimizer = torch.optim.AdamW(m.parameters(), lr=3e-3)  # made before the swap
    transformer.swap(m)
    ids, mask = padded_batch("llama")
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = m(ids, attention_mask=mask, labels=_labels(ids, mask)).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.interpret
@pytest.mark.parametrize("backend", backends_for("feed_forward", "cpu"))
@pytest.mark.parametrize("family", ["llama", "bert"])
def test_forced_backend(family, backend):
    # Every fused block and the attention run on the named backend (the Triton ones under the interpreter).
    m = model(family).train()
    ids, mask = padded_batch(family, batch=2, length=7)
    ref = fp64_copy(m)
    expected = ref(ids, attention_mask=mask).logits
    torch_out = m(ids, attention_mask=mask).logits.detach()
    report = transformer.swap(m, backend=backend)
    assert report.backend == backend
    out = m(ids, attention_mask=mask).logits
    assert_within_rule(out.detach(), torch_out, expected.detach(), valid=mask.bool())
    out[mask.bool()].sum().backward()
    assert [n for n, p in m.named_parameters() if p.grad is None] == []


def test_model_of_another_family_is_left_and_reported():
    cfg = transformers.OPTConfig(vocab_size=61, hidden_size=16, num_hidden_layers=1, ffn_dim=24,
                                 num_attention_heads=2, word_embed_proj_dim=16, attn_implementation="sdpa")
    m = transformers.OPTForCausalLM(cfg).eval()
    classes = {name: type(sub) for name, sub in m.named_modules()}
    report = transformer.swap(m)
    assert report.swapped == []
    assert {name: type(sub) for name, sub in m.named_modules()} == classes  # nn.LayerNorms included
    assert m.config._attn_implementation == "sdpa"
    text = str(report)
    assert "type 'opt': no adapter" in text
    assert "self_attn" in text and "final_layer_norm" in text  # its block-like modules are named


def test_include_exclude_and_nested_models():
    holder = nn.ModuleDict({"lm": model("llama"), "head": nn.Linear(4, 4)})  # any nn.Module holding a model
    report = transformer.swap(holder, exclude=["*.mlp"])
    lm = holder["lm"]
    assert type(lm.model.layers[0].mlp).__name__ == "LlamaMLP"
    assert type(lm.model.layers[0].input_layernorm).__name__ == "FusedLlamaRMSNorm"
    assert ("lm.model.layers.0.mlp", "transformers.LlamaMLP", "excluded") in report.left
    again = transformer.swap(holder)  # a second swap only takes what was left
    assert type(lm.model.layers[0].mlp).__name__ == "FusedLlamaMLP"
    assert any(reason == "already fused" for _, _, reason in again.left) or all(
        "RMSNorm" not in row[1] for row in again.swapped)
    other = model("llama")
    report = transformer.swap(other, exclude=["LlamaAttention"])
    assert other.config._attn_implementation == "sdpa"
    assert sum("LlamaAttention" in row[1] for row in report.left) == 2


def test_unsupported_activation_is_left_with_its_reason():
    m = model("gpt2")
    m.config.activation_function = "gelu_fast"  # an approximation no kernel computes
    report = transformer.swap(m)
    assert any("GPT2MLP" in row[1] and "gelu_fast" in row[2] for row in report.left), str(report)


def test_from_pretrained_with_fused_kernels_attention(tmp_path):
    import transformer.hf  # noqa: F401  (registers "fused_kernels")

    m = model("qwen2")
    ids, mask = padded_batch("qwen2")
    m.save_pretrained(tmp_path)
    loaded = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path, attn_implementation="fused_kernels").eval()
    assert loaded.config._attn_implementation == "fused_kernels"
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, attention_mask=mask).logits[mask.bool()],
                                   m(ids, attention_mask=mask).logits[mask.bool()], atol=2e-5, rtol=1e-4)
