"""GPU tier: swapped models captured whole in CUDA graphs, and torch.compile(mode="reduce-overhead").

* the decoding step of a GPT over static caches (``GPT.decode_step``): no host synchronisation
  (``torch.cuda.set_sync_debug_mode("error")``), captured once and replayed token after token with the same logits
  and tokens as the eager steps;
* a whole training step (forward, backward, a capturable AdamW step) of a swapped ``nn.TransformerEncoder`` decoder
  captured and replayed: the same losses and parameters as the eager steps;
* ``torch.compile(mode="reduce-overhead")`` (inductor with CUDA graphs) of a swapped model: compiles, same outputs.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import transformer
from transformer import GPT, GPTConfig
from transformer.generation import CUDAGraphStep

pytestmark = pytest.mark.gpu

CONFIG = dict(vocab_size=512, max_seq_len=96, d_model=256, n_heads=4, n_layers=2)


def _gpt(dtype=torch.float32):
    torch.manual_seed(0)
    return GPT(GPTConfig(**CONFIG)).to("cuda", dtype).eval()


@torch.no_grad()
def test_decode_step_does_not_synchronise():
    model = _gpt()
    caches = model.new_static_cache(2, 32)
    prompt = torch.randint(0, 512, (2, 7), device="cuda")
    model.decode_step(prompt, caches)  # the first call may set things up (kernel compilation)
    token = torch.randint(0, 512, (2, 1), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            token = model.decode_step(token, caches).argmax(-1, keepdim=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_decode_step_capture_and_replay_equal_eager_steps(dtype):
    model = _gpt(dtype)
    prompt = torch.randint(0, 512, (3, 5), device="cuda")
    eager_caches, graph_caches = model.new_static_cache(3, 40), model.new_static_cache(3, 40)
    token = model.decode_step(prompt, eager_caches).argmax(-1, keepdim=True)
    model.decode_step(prompt, graph_caches)
    step = CUDAGraphStep(lambda t: model.decode_step(t, graph_caches), token,
                         state=[c.length for c in graph_caches])
    for _ in range(20):
        expected = model.decode_step(token, eager_caches)
        got = step(token)
        torch.testing.assert_close(got, expected)
        token = expected.argmax(-1, keepdim=True)
    assert all(torch.equal(a.length, b.length) for a, b in zip(eager_caches, graph_caches))


@torch.no_grad()
def test_generate_with_cuda_graph_gives_the_eager_tokens():
    model = _gpt()
    prompt = torch.randint(0, 512, (2, 6), device="cuda")
    expected = model.generate(prompt, 24)
    assert torch.equal(model.generate(prompt, 24, cuda_graph=True), expected)
    assert torch.equal(model.generate(prompt, 24, static_cache=True), expected)


class _Decoder(nn.Module):
    """A pre-norm decoder of torch.nn modules (as in benchmarks/ops/model.py), swapped below."""

    def __init__(self, vocab=512, d=256, heads=4, layers=2, seq=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d), enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab, bias=False)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, idx):
        s = idx.shape[1]
        return self.head(self.blocks(self.embed(idx), mask=self.causal[:s, :s], is_causal=True))


def test_training_step_capture_and_replay_equal_eager_steps():
    torch.manual_seed(0)
    eager = _Decoder().cuda()
    transformer.swap(eager)
    graphed = copy.deepcopy(eager)
    data = torch.randint(0, 512, (6, 4, 33), device="cuda")

    def make_step(model, idx):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, capturable=True)

        def step():
            optimizer.zero_grad(set_to_none=False)
            logits = model(idx[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
            loss.backward()
            optimizer.step()
            return loss
        return step

    eager_idx = data[0].clone()
    eager_step = make_step(eager, eager_idx)
    static_idx = data[0].clone()
    graph_step = make_step(graphed, static_idx)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (the same three steps as the eager model takes)
        for i in range(3):
            static_idx.copy_(data[i])
            eager_idx.copy_(data[i])
            torch.testing.assert_close(graph_step(), eager_step())
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = graph_step()
    for i in range(3, 6):
        static_idx.copy_(data[i])
        eager_idx.copy_(data[i])
        graph.replay()
        torch.testing.assert_close(static_loss, eager_step(), rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), graphed.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)


@torch.no_grad()
def test_reduce_overhead_compiles_a_swapped_model():
    torch.manual_seed(0)
    model = _Decoder().cuda().eval()
    transformer.swap(model)
    idx = torch.randint(0, 512, (2, 64), device="cuda")
    expected = model(idx)
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # recorded, then replayed
        got = compiled(idx)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
