"""``python -m benchmarks.soak``: a small GPT on the native CPU kernels trained for many steps with dropout on.

It reports what a long run must show: the resident memory (RSS) from an early step to the last grows by less than
2% (no leak per step), the loss stays finite, and a checkpoint (model ``state_dict``, optimizer ``state_dict`` and
torch's CPU generator state, which every dropout draws its seed from) saved mid-run and loaded into a fresh model
reproduces the following steps bit for bit: the same losses and the same parameters.

    python -m benchmarks.soak                          # 1000 steps, RSS from step 100, checkpoint at 500, 20 resumed
    python -m benchmarks.soak --steps 200 --rss-from 50 --checkpoint-at 100
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import time
from dataclasses import dataclass

import torch

from transformer import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=64, max_seq_len=32, d_model=32, n_heads=2, n_layers=2, dropout=0.1)
BATCH, SEQ = 8, 32


@dataclass
class SoakResult:
    steps: int
    losses: list[float]  # one per step, the first step's at index 0
    rss_from_step: int
    rss_start_mb: float  # after step rss_from_step
    rss_end_mb: float  # after the last step
    checkpoint_step: int
    resumed_steps: int
    resumed_losses_equal: bool
    resumed_parameters_equal: bool
    seconds: float

    @property
    def rss_growth(self) -> float:
        return self.rss_end_mb / self.rss_start_mb - 1.0

    @property
    def all_finite(self) -> bool:
        return all(math.isfinite(loss) for loss in self.losses)

    def summary(self) -> str:
        first, last = sum(self.losses[:20]) / 20, sum(self.losses[-20:]) / 20
        return (f"{self.steps} steps in {self.seconds:.0f} s ({torch.get_num_threads()} threads): loss {first:.3f} "
                f"(first 20) -> {last:.3f} (last 20), all finite: {self.all_finite}; RSS {self.rss_start_mb:.1f} MB "
                f"after step {self.rss_from_step} -> {self.rss_end_mb:.1f} MB after step {self.steps} "
                f"({100 * self.rss_growth:+.2f}%); checkpoint at step {self.checkpoint_step}, steps "
                f"{self.checkpoint_step + 1}-{self.checkpoint_step + self.resumed_steps} resumed: losses bit-identical "
                f"{self.resumed_losses_equal}, parameters bit-identical {self.resumed_parameters_equal}")


def rss_mb() -> float:
    """The resident set size of this process, in MB (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def batch(step: int) -> torch.Tensor:
    """The tokens of one step, ``(BATCH, SEQ + 1)``: a function of the step alone, so a resumed run needs no loader
    state. Each sequence follows ``t -> 3 t + 1 mod vocab`` from a random start, which the model can learn."""
    generator = torch.Generator().manual_seed(step)
    columns = [torch.randint(0, CONFIG.vocab_size, (BATCH, 1), generator=generator)]
    for _ in range(SEQ):
        columns.append((3 * columns[-1] + 1) % CONFIG.vocab_size)
    return torch.cat(columns, dim=1)


def new_run(backend: str = "native") -> tuple[GPT, torch.optim.Optimizer]:
    model = GPT(CONFIG, backend=backend).train()
    return model, torch.optim.AdamW(model.parameters(), lr=3e-3)


def train_step(model: GPT, optimizer: torch.optim.Optimizer, step: int) -> float:
    tokens = batch(step)
    _, loss = model(tokens[:, :-1], tokens[:, 1:])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def save_checkpoint(model: GPT, optimizer: torch.optim.Optimizer, step: int) -> bytes:
    buffer = io.BytesIO()
    torch.save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state()}, buffer)
    return buffer.getvalue()


def load_checkpoint(data: bytes, backend: str = "native") -> tuple[GPT, torch.optim.Optimizer, int]:
    state = torch.load(io.BytesIO(data), weights_only=True)
    model, optimizer = new_run(backend)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return model, optimizer, state["step"]


def soak(steps: int = 1000, *, rss_from: int = 100, checkpoint_at: int = 500, resumed: int = 20,
         backend: str = "native", seed: int = 0, progress=None) -> SoakResult:
    """Trains ``steps`` steps (numbered from 1), measures the RSS after step ``rss_from`` and after the last, saves a
    checkpoint after step ``checkpoint_at``, then replays steps ``checkpoint_at + 1 .. + resumed`` from it."""
    if not 0 < rss_from < steps or not 0 < checkpoint_at <= steps - resumed:
        raise ValueError(f"need 0 < rss_from < steps and checkpoint_at + resumed <= steps; got steps={steps}, "
                         f"rss_from={rss_from}, checkpoint_at={checkpoint_at}, resumed={resumed}")
    started = time.perf_counter()
    torch.manual_seed(seed)
    model, optimizer = new_run(backend)
    losses, checkpoint, rss_start, after_resumed = [], None, None, None
    for step in range(1, steps + 1):
        losses.append(train_step(model, optimizer, step))
        if step == rss_from:
            rss_start = rss_mb()
        if step == checkpoint_at:
            checkpoint = save_checkpoint(model, optimizer, step)
        if step == checkpoint_at + resumed:
            after_resumed = [p.detach().clone() for p in model.parameters()]
        if progress is not None and step % 100 == 0:
            print(f"step {step}: loss {losses[-1]:.4f}, RSS {rss_mb():.1f} MB", file=progress, flush=True)
    rss_end = rss_mb()
    seconds = time.perf_counter() - started

    torch.manual_seed(seed + 1)  # the generator is elsewhere now: the checkpoint must bring it back
    model, optimizer, step = load_checkpoint(checkpoint, backend)
    replayed = [train_step(model, optimizer, step + i) for i in range(1, resumed + 1)]
    expected = losses[checkpoint_at:checkpoint_at + resumed]
    return SoakResult(
        steps=steps, losses=losses, rss_from_step=rss_from, rss_start_mb=rss_start, rss_end_mb=rss_end,
        checkpoint_step=checkpoint_at, resumed_steps=resumed,
        resumed_losses_equal=replayed == expected,
        resumed_parameters_equal=all(torch.equal(a, b) for a, b in zip(after_resumed, model.parameters())),
        seconds=seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rss-from", type=int, default=100, help="the step whose RSS is the baseline")
    parser.add_argument("--checkpoint-at", type=int, default=500)
    parser.add_argument("--resumed", type=int, default=20, help="steps replayed from the checkpoint")
    parser.add_argument("--backend", default="native")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = soak(args.steps, rss_from=args.rss_from, checkpoint_at=args.checkpoint_at, resumed=args.resumed,
                  backend=args.backend, progress=sys.stderr)
    print(result.summary())
    ok = (result.all_finite and result.rss_growth < 0.02 and result.resumed_losses_equal
          and result.resumed_parameters_equal)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
