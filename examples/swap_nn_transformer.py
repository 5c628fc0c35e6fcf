"""Swap the fused kernels into an existing nn.Transformer model: same parameters, same outputs, the swap report,
and the time of a training step and an inference forward before and after.

    python examples/swap_nn_transformer.py --backend auto
"""

from __future__ import annotations

import copy
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import transformer  # noqa: E402
from examples._common import backend_report, median_seconds, parser  # noqa: E402


class Translator(nn.Module):
    """Somebody's existing model: embeddings around an nn.Transformer."""

    def __init__(self, vocab=1000, d_model=128):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.core = nn.Transformer(d_model, 4, 2, 2, 4 * d_model, dropout=0.0, batch_first=True)
        self.out = nn.Linear(d_model, vocab)

    def forward(self, src, tgt, src_padding):
        causal = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], device=tgt.device)
        h = self.core(self.embed(src), self.embed(tgt), tgt_mask=causal, tgt_is_causal=True,
                      src_key_padding_mask=src_padding, memory_key_padding_mask=src_padding)
        return self.out(h)


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    model = Translator().to(args.device)
    src = torch.randint(0, 1000, (8, 48), device=args.device)
    tgt = torch.randint(0, 1000, (8, 40), device=args.device)
    padding = torch.arange(48, device=args.device)[None] >= torch.randint(24, 49, (8, 1), device=args.device)
    original = copy.deepcopy(model)
    parameters = list(model.parameters())

    report = transformer.swap(model, backend=args.backend)
    print(report)
    print(backend_report(args.backend, args.device))
    same = all(a is b for a, b in zip(parameters, model.parameters()))
    with torch.no_grad():
        error = (model(src, tgt, padding) - original(src, tgt, padding)).abs().max().item()
    print(f"same parameter objects: {same}; max |swapped - original| = {error:.2e}")

    def step(m, optimizer):
        def run():
            loss = m(src, tgt, padding).float().logsumexp(-1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return run

    def infer(m):
        def run():
            with torch.no_grad():
                m(src, tgt, padding)
        return run

    tokens = src.numel() + tgt.numel()
    for name, m in (("torch.nn", original), ("swapped", model)):
        m.train()
        train_s = median_seconds(step(m, torch.optim.SGD(m.parameters(), lr=1e-4)), args.repeats)
        m.eval()
        infer_s = median_seconds(infer(m), args.repeats)
        print(f"{name:9s} training step {train_s * 1e3:7.1f} ms ({tokens / train_s:,.0f} tokens/s)   "
              f"inference {infer_s * 1e3:7.1f} ms ({tokens / infer_s:,.0f} tokens/s)")


if __name__ == "__main__":
    main()
