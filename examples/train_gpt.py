"""Train a tiny byte-level GPT on the text shipped in examples/data, then sample from it (about a minute on CPU).

    python examples/train_gpt.py --backend auto --steps 200
"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from examples._common import backend_report, parser  # noqa: E402
from transformer import GPT, GPTConfig  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tiny_corpus.txt")


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--text", default=DATA, help="a text file (read as bytes)")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    data = torch.tensor(list(open(args.text, "rb").read()), dtype=torch.long)
    split = int(0.9 * len(data))
    train, valid = data[:split], data[split:]
    config = GPTConfig(vocab_size=256, max_seq_len=args.context, d_model=64, n_heads=4, n_layers=2, dropout=0.0)
    model = GPT(config, backend=args.backend).to(args.device)
    print(backend_report(args.backend, args.device))
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {len(data)} bytes of text")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)

    def batch(source):
        starts = torch.randint(len(source) - args.context - 1, (args.batch,))
        rows = torch.stack([source[s:s + args.context + 1] for s in starts]).to(args.device)
        return rows[:, :-1], rows[:, 1:]

    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        _, loss = model(*batch(train))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 50 == 0 or step == 1:
            with torch.no_grad():
                model.eval()
                valid_loss = model(*batch(valid))[1].item()
                model.train()
            tokens = step * args.batch * args.context
            print(f"step {step:4d}  train loss {loss.item():.3f}  valid loss {valid_loss:.3f}  "
                  f"{tokens / (time.perf_counter() - start):,.0f} tokens/s")
    prompt = torch.tensor([list(b"The keeper ")], device=args.device)
    out = model.generate(prompt, args.context - prompt.shape[1], do_sample=True, temperature=0.8, top_k=20)
    print("sample:", bytes(out[0].tolist()).decode("utf-8", errors="replace"))


if __name__ == "__main__":
    main()
