"""``python -m benchmarks.profiling.overhead``: the profiler's timing phase against a plain loop on the same step.

The issue's target: the step time ``profile_model`` reports (the timing phase, profiler off) within 5% of what a
plain ``for _ in range(n): step()`` loop measures on the same model. Both time the same closure, in turns (rounds of
one plain loop then one timing phase, so a slow spell of a shared machine falls on both); printed: the plain loop's
mean step time, the timing phase's median and mean, and their ratios (median over the rounds).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from . import models
from .measure import time_steps
from .steps import make_step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiling.overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="nn-transformer")
    parser.add_argument("--mode", default="train", choices=["train", "inference"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    built = models.build(args.model, "medium" if cuda else "small", args.mode, batch=8 if cuda else 2,
                         seq_len=1024 if cuda else 64, new_tokens=1, device=device,
                         dtype=torch.bfloat16 if cuda else torch.float32)
    built.model.train(args.mode == "train")
    inputs = ((), built.inputs) if isinstance(built.inputs, dict) else (tuple(built.inputs), {})
    optimizer = torch.optim.AdamW(built.model.parameters(), lr=1e-5) if args.mode == "train" else None
    step = make_step(built.model, inputs, args.mode, loss_fn=built.loss_fn, optimizer=optimizer)
    for _ in range(3):
        step()

    def plain_loop() -> float:
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / args.steps

    ratios_median, ratios_mean = [], []
    for _ in range(args.rounds):
        plain = plain_loop()
        start = time.perf_counter()
        timing = time_steps({"step": step}, args.steps, device)["step"]
        phase_mean = (time.perf_counter() - start) / args.steps
        ratios_median.append(timing.median_s / plain)
        ratios_mean.append(phase_mean / plain)
        print(f"plain loop {plain * 1e3:8.3f} ms/step   timing phase median {timing.median_s * 1e3:8.3f} ms, "
              f"mean {phase_mean * 1e3:8.3f} ms")
    print(f"{built.label} {args.mode} on {device}: timing phase / plain loop, median over {args.rounds} rounds: "
          f"median step {statistics.median(ratios_median):.3f}, mean step {statistics.median(ratios_mean):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
