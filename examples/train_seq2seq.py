"""Train a tiny encoder-decoder ("Attention Is All You Need") on a synthetic copy or reverse task, then decode
greedily with the key/value cache and report sequence accuracy (about a minute on CPU).

    python examples/train_seq2seq.py --task reverse --backend auto
"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from examples._common import backend_report, parser  # noqa: E402
from transformer import Seq2Seq, Seq2SeqConfig  # noqa: E402

PAD, BOS, EOS, FIRST = 0, 1, 2, 3  # symbols are FIRST .. vocab-1


def make_batch(batch, vocab, min_len, max_len, task, device, generator=None):
    """Source rows of random symbols (padded), targets BOS + (the same or reversed) + EOS (padded)."""
    lengths = torch.randint(min_len, max_len + 1, (batch,), generator=generator)
    src = torch.full((batch, max_len), PAD, dtype=torch.long)
    tgt = torch.full((batch, max_len + 2), PAD, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        symbols = torch.randint(FIRST, vocab, (n,), generator=generator)
        src[i, :n] = symbols
        tgt[i, 0] = BOS
        tgt[i, 1:n + 1] = symbols.flip(0) if task == "reverse" else symbols
        tgt[i, n + 1] = EOS
    return src.to(device), tgt.to(device)


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--task", default="reverse", choices=("copy", "reverse"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--vocab", type=int, default=16)
    p.add_argument("--max-len", type=int, default=10)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    config = Seq2SeqConfig(src_vocab_size=args.vocab, tgt_vocab_size=args.vocab, max_seq_len=args.max_len + 2,
                           d_model=64, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=128, dropout=0.0,
                           share_embeddings=True, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    model = Seq2Seq(config, backend=args.backend).to(args.device)
    print(backend_report(args.backend, args.device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        src, tgt = make_batch(args.batch, args.vocab, 3, args.max_len, args.task, args.device)
        loss = model.loss(src, tgt)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  ({time.perf_counter() - start:.1f} s)")
    src, tgt = make_batch(200, args.vocab, 3, args.max_len, args.task, args.device,
                          generator=torch.Generator().manual_seed(123))
    out = model.generate(src, args.max_len + 1)
    width = min(out.shape[1], tgt.shape[1])
    correct = (out[:, :width] == tgt[:, :width]) | (tgt[:, :width] == PAD)
    print(f"{args.task}: sequence accuracy {correct.all(dim=1).float().mean().item():.1%} on 200 held-out rows "
          "(greedy, key/value cache)")
    print("example:", src[0].tolist(), "->", out[0].tolist())


if __name__ == "__main__":
    main()
