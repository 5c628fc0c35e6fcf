"""torch.compile of swapped and native models: ``fullgraph=True`` traces them whole (no graph break), on the CPU.

``torch._dynamo.explain`` counts the breaks; a compiled run with the ``eager`` / ``aot_eager`` backends (no code
generation, so CPU time stays low) must also compute what the uncompiled model computes. A graph break means Python
that dynamo cannot trace runs per call (or a host synchronisation): exactly what CUDA-graph capture cannot take either.
``mode="reduce-overhead"`` (CUDA graphs through inductor) is in the GPU tier (test_cuda_graphs.py).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo as dynamo
from torch import nn

import transformer
from transformer import BERT, GPT, BERTConfig, GPTConfig

D, H, FF = 32, 2, 64


def _gpt(**overrides):
    return GPT(GPTConfig(vocab_size=64, max_seq_len=32, d_model=D, n_heads=H, n_layers=2, **overrides))


def _assert_no_graph_break(fn, *args, **kwargs):
    dynamo.reset()
    explanation = dynamo.explain(fn)(*args, **kwargs)
    reasons = [str(reason.reason).splitlines()[0] for reason in explanation.break_reasons]
    assert explanation.graph_break_count == 0, f"{explanation.graph_break_count} graph break(s): {reasons}"
    assert explanation.graph_count == 1


def _swapped_nn_transformer():
    model = nn.Transformer(D, H, 1, 1, FF, dropout=0.0, batch_first=True)
    transformer.swap(model)
    src, tgt = torch.randn(2, 7, D), torch.randn(2, 5, D)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 4:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    return model, (src, tgt), dict(tgt_mask=causal, src_key_padding_mask=padding, memory_key_padding_mask=padding,
                                   tgt_is_causal=True)


def _swapped_nn_encoder():
    layer = nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True, activation="gelu")
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    transformer.swap(model)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[0, 2:] = True
    return model, (torch.randn(3, 6, D),), dict(src_key_padding_mask=padding)


def _bert():
    model = BERT(BERTConfig(vocab_size=64, max_seq_len=16, d_model=D, n_heads=H, n_layers=2, dropout=0.0))
    ids = torch.randint(1, 64, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    return model, (ids,), dict(attention_mask=mask, labels=ids)


def _gpt_case():
    idx = torch.randint(0, 64, (2, 9))
    return _gpt(), (idx,), dict(targets=idx)


MODELS = {"gpt": _gpt_case, "bert": _bert, "nn.Transformer swapped": _swapped_nn_transformer,
          "nn.TransformerEncoder swapped": _swapped_nn_encoder}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(MODELS))
def test_fullgraph_without_graph_break_and_same_outputs(name, mode):
    torch.manual_seed(0)
    model, args, kwargs = MODELS[name]()
    model.train(mode == "train")
    _assert_no_graph_break(model, *args, **kwargs)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        expected, got = model(*args, **kwargs), compiled(*args, **kwargs)
    for e, g in zip(*(out if isinstance(out, tuple) else (out,) for out in (expected, got))):
        torch.testing.assert_close(g, e)


def test_compiled_training_step_matches_eager():
    """aot_eager: dynamo's graph and AOTAutograd's joint forward/backward graph over our ops (their fake
    implementations and registered autograd), against the eager step."""
    torch.manual_seed(0)
    model = _gpt(dropout=0.0)
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model, fullgraph=True, backend="aot_eager")
    idx = torch.randint(0, 64, (2, 9))
    _, loss = model(idx, idx)
    loss.backward()
    _, compiled_loss = compiled(idx, idx)
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, loss)
    for (name, p), q in zip(model.named_parameters(), compiled_model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_static_decode_step_traces_whole():
    """The one-token decoding step over static caches has no graph break: no host synchronisation (an .item() or a
    branch on a tensor value would break the graph), hence capturable in a CUDA graph."""
    torch.manual_seed(0)
    model = _gpt().eval()
    prompt = torch.randint(0, 64, (2, 5))
    caches = model.new_static_cache(2, 12)
    with torch.no_grad():
        model.decode_step(prompt, caches)
        token = torch.randint(0, 64, (2, 1))
        saved = [c.length.clone() for c in caches]
        _assert_no_graph_break(model.decode_step, token, caches)
        for cache, length in zip(caches, saved):
            cache.length.copy_(length)  # explain ran the step once
        expected = model.decode_step(token, caches)
        for cache, length in zip(caches, saved):
            cache.length.copy_(length)
        got = torch.compile(model.decode_step, fullgraph=True, backend="eager")(token, caches)
    torch.testing.assert_close(got, expected)
    assert all(int(c.length[0]) == 6 for c in caches)


def test_fullgraph_with_dropout_without_graph_break():
    """Dropout's Philox seed is a device tensor the kernels read (no .item() on the host): no graph break."""
    torch.manual_seed(0)
    model = _gpt(dropout=0.1).train()
    idx = torch.randint(0, 64, (2, 9))
    _assert_no_graph_break(model, idx, idx)
