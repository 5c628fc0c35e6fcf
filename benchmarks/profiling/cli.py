"""``python -m benchmarks profile``: profile a whole model's step, eager and swapped, from the command line.

Examples:
    python -m benchmarks profile --model gpt --mode train --device cpu --out profile-out/gpt
    python -m benchmarks profile --model hf:llama --size medium --mode generate --batch 1 --seq-len 512
    python -m benchmarks profile --model nn-transformer --mode inference --swap false --steps 50

Writes into --out (default profile-out/<model>-<mode>-<device>-<time>): profile.json, trace-eager.json and
trace-swapped.json (open them in https://ui.perfetto.dev or chrome://tracing) and blocks.png.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

from ..ceilings import measure_ceilings
from ..command_line import add_device_arguments, resolve_device
from . import models, outputs
from .api import _BACKENDS, MODES, profile_model

SWAP_CHOICES = {"both": "both", "true": True, "false": False}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help=f"{', '.join(models.MODELS)} or hf:<family> ({', '.join(models.HF_FAMILIES)})")
    parser.add_argument("--size", choices=models.SIZES, default="small")
    parser.add_argument("--mode", choices=MODES, default="train")
    parser.add_argument("--batch", type=int, help="sequences per step (default 8 on CUDA, 2 on the CPU)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence, or per prompt (default 1024 / 64)")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens decoded per step in generate mode")
    parser.add_argument("--swap", choices=sorted(SWAP_CHOICES), default="both",
                        help="both: eager and swapped side by side; true: swapped only; false: eager only")
    parser.add_argument("--backend", choices=_BACKENDS, default="auto", help="the swapped model's kernels")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (profiler off)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile-steps", type=int, default=3, help="steps recorded by the profiler")
    parser.add_argument("--top", type=int, default=12, help="ops or kernels listed per variant, by self time")
    add_device_arguments(parser, dtypes=("fp16", "bf16", "fp32"))
    parser.add_argument("--quick-ceilings", action="store_true", help="measure the ceilings on smaller sizes")
    parser.add_argument("--out", help="output folder (default: profile-out/<model>-<mode>-<device>-<time>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    resolved = resolve_device(args)
    if resolved is None:
        return 2
    device, dtype = resolved
    cuda = device.type == "cuda"
    batch = args.batch or (8 if cuda else 2)
    seq_len = args.seq_len or (1024 if cuda and args.mode != "generate" else 64)
    try:
        built = models.build(args.model, args.size, args.mode, batch=batch, seq_len=seq_len,
                             new_tokens=args.new_tokens, device=device, dtype=dtype)
    except ValueError as error:
        print(f"python -m benchmarks profile: {error}", file=sys.stderr)
        return 2
    slug = args.model.replace(":", "-")
    out = args.out or os.path.join(
        "profile-out", f"{slug}-{args.mode}-{device.type}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")
    print(f"measuring the ceilings on {device} ...", file=sys.stderr, flush=True)
    ceilings = measure_ceilings(device, quick=args.quick_ceilings or not cuda)
    profile = profile_model(
        built.model, built.inputs, mode=args.mode, steps=args.steps, warmup=args.warmup,
        swap=SWAP_CHOICES[args.swap], backend=args.backend, loss_fn=built.loss_fn, out=out,
        new_tokens=args.new_tokens, profile_steps=args.profile_steps, ceilings=ceilings,
        label=f"{built.label}, batch {batch} x {seq_len}", progress=not args.no_progress, top=args.top)
    if built.notes:
        profile.notes.extend(f"note: {note}" for note in built.notes)
        outputs.write_record(profile, profile.outputs["record"])
    print(profile)
    for variant in profile.variants:
        if variant.swap_report:
            print(f"\n{variant.swap_report}")
    print("\n" + "\n".join(f"{name}: {path}" for name, path in profile.outputs.items()))
    return 0
