"""``python -m benchmarks``: the benchmark suites on whatever device is here.

Examples:
    python -m benchmarks --quick                       # every op, small shapes, a table and a record in bench-out/
    python -m benchmarks --op attention --mode fwd --dtype bf16 --out benchmarks/results/h200-attention
    python -m benchmarks --op layer_norm --provider native --provider eager --device cpu
    python -m benchmarks profile --model gpt --mode train   # a whole model's step, eager vs swapped (profile --help)
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys

import torch

from . import ops  # noqa: F401  (registers every suite)
from .ceilings import measure_ceilings
from .command_line import add_device_arguments, resolve_device
from .ops.overhead import overhead_table
from .records import device_slug, environment, write_record
from .report import ceilings_line, skipped, terminal_table, write_markdown, write_plots
from .runner import run_cases
from .suite import MODES, SUITES, SuiteConfig, iter_cases

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--op", action="append", choices=sorted(SUITES), help="op suite(s) to run (default: all)")
    parser.add_argument("--provider", action="append", help="provider(s) to time (default: all), e.g. triton, eager")
    parser.add_argument("--mode", action="append", choices=MODES, help="fwd, bwd, fwd+bwd (default: all)")
    parser.add_argument("--match", action="append", metavar="REGEX",
                        help="run only the cases whose 'op mode shape label' text fully matches one of these, e.g. "
                             "'attention fwd B=4 S=4096 H=16 D=128( key padding mask)?'")
    add_device_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="small shapes and short timing: a smoke run")
    parser.add_argument("--budget", type=float, help="seconds of timed calls per provider (default 0.5, quick 0.1)")
    parser.add_argument("--cuda-graph", action="store_true", help="time CUDA-graph replays (launch-bound shapes)")
    parser.add_argument("--out", help="output folder (default: bench-out/<device>-<time>)")
    parser.add_argument("--no-plots", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["profile"]:
        from .profiling.cli import main as profile_main

        return profile_main(argv[1:])
    args = parse_args(argv)
    resolved = resolve_device(args)
    if resolved is None:
        return 2
    device, dtype = resolved
    config = SuiteConfig(device=device, dtype=dtype, quick=args.quick, modes=tuple(args.mode or MODES))
    env = environment(device)
    out_dir = args.out or os.path.join(
        "bench-out", f"{device_slug(env)}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")

    print(f"measuring the ceilings on {env['device_name']} ...", file=sys.stderr, flush=True)
    ceilings = measure_ceilings(device, quick=args.quick)
    print(ceilings_line(ceilings, env), file=sys.stderr, flush=True)
    budget = args.budget if args.budget is not None else (0.1 if args.quick else 0.5)
    torch.manual_seed(0)
    cases = iter_cases(args.op or sorted(SUITES), config)
    if args.match:
        patterns = [re.compile(pattern) for pattern in args.match]
        cases = (c for c in cases if any(p.fullmatch(f"{c.op} {c.mode} {c.shape_text()}") for p in patterns))
    command = ["python", "-m", "benchmarks", *argv]
    results = run_cases(cases, ceilings,
                        providers=set(args.provider) if args.provider else None, budget_s=budget,
                        cuda_graph=args.cuda_graph,
                        on_case=lambda so_far: write_record(out_dir, env, ceilings, so_far, command))

    record = write_record(out_dir, env, ceilings, results, command)
    table = write_markdown(out_dir, results, ceilings, env)
    plots = [] if args.no_plots else write_plots(out_dir, results)
    print()
    print(ceilings_line(ceilings, env))
    print(terminal_table(results))
    overhead = overhead_table(results)
    if overhead:
        print(f"\nhost time per call (--op overhead):\n{overhead}")
    for line in skipped(results):
        print(f"  not run: {line}")
    print(f"\nrecord: {record}\ntable: {table}\nplots: {len(plots)} in {out_dir}")
    return 0 if any(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
