"""Tiny Hugging Face models of every family transformer.swap adapts (built from configs, nothing downloaded), their
padded batches, and the tolerance rule applied to whole-model outputs."""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (CI installs it)")

VOCAB, HIDDEN, LAYERS, HEADS, FFN = 61, 32, 2, 4, 40
ENCODERS = ("bert", "roberta")
FAMILIES = ("bert", "roberta", "gpt2", "llama", "mistral", "qwen2")


def config(family: str, dropout: float = 0.0, attn_implementation: str = "sdpa"):
    """A 2-layer, hidden-32 config of ``family`` (GQA for the Llama-style ones), all dropout ``dropout``."""
    common = {"vocab_size": VOCAB, "attn_implementation": attn_implementation}
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN, n_positions=64,
                                       resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, bos_token_id=1,
                                       eos_token_id=2, pad_token_id=0, **common)
    sizes = {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
             "intermediate_size": FFN, **common}
    if family in ENCODERS:
        cls = transformers.BertConfig if family == "bert" else transformers.RobertaConfig
        return cls(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, pad_token_id=1,
                   max_position_embeddings=64, **sizes)
    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config}[family]
    kv_heads = {"llama": 2, "mistral": 2, "qwen2": 1}[family]  # GQA and MQA
    return cls(num_key_value_heads=kv_heads, attention_dropout=dropout, max_position_embeddings=64, pad_token_id=0,
               bos_token_id=1, eos_token_id=2, **sizes)


def model(family: str, dropout: float = 0.0, seed: int = 0):
    """A freshly initialised model of ``family`` with its LM head, in eval mode."""
    torch.manual_seed(seed)
    cfg = config(family, dropout)
    if family in ENCODERS:
        cls = transformers.BertForMaskedLM if family == "bert" else transformers.RobertaForMaskedLM
    else:
        cls = {"gpt2": transformers.GPT2LMHeadModel, "llama": transformers.LlamaForCausalLM,
               "mistral": transformers.MistralForCausalLM, "qwen2": transformers.Qwen2ForCausalLM}[family]
    return cls(cfg).eval()


def padded_batch(family: str, batch: int = 3, length: int = 11):
    """(input_ids, attention_mask): right padding for the encoders, left padding for the decoders; lengths differ."""
    ids = torch.randint(3, VOCAB, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, pad in enumerate((0, 4, 7)[:batch]):
        if family in ENCODERS:
            mask[row, length - pad:] = 0
        else:
            mask[row, :pad] = 0
    ids[mask == 0] = 1 if family == "roberta" else 0
    return ids, mask


def assert_within_rule(out, torch_out, ref, valid=None, atol=1e-5, factor=2.0, name="logits"):
    """The tolerance rule on a model output: ``max|out - ref| <= factor * max|torch_out - ref| + atol`` over the
    ``valid`` positions, ``ref`` computed in fp64 and ``torch_out`` by the unswapped fp32 model."""
    if valid is not None:
        out, torch_out, ref = out[valid], torch_out[valid], ref[valid]
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    error = (out.double() - ref).abs().max().item()
    bound = factor * (torch_out.double() - ref).abs().max().item() + atol
    assert error <= bound, f"{name}: max error {error:.3g} > {bound:.3g} (torch's own error x{factor} + {atol})"


def fp64_copy(m):
    """The reference: the same model in fp64, unswapped."""
    return copy.deepcopy(m).double()
