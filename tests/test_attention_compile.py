"""Ahead-of-time compilation of the Triton attention kernels for sm_80 and sm_90 (no GPU needed): catches what the
interpreter cannot (compiled-mode typing of branches, constexpr folding, dot shapes) and prints registers / stack /
shared memory. The interpreter tests check the numbers; this checks that the GPU build of the same code exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import pytest

triton = pytest.importorskip("triton")

try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError:  # pragma: no cover - older triton
    pytest.skip("this triton has no ahead-of-time compile API", allow_module_level=True)

POINTERS = {"Lse": "*fp32", "Delta": "*fp32", "Kpm": "*u8", "BlockMap": "*i8", "CuSeqQ": "*i32", "CuSeqK": "*i32",
            "SeqLensK": "*i32", "Mask": "*u8", "Seed": "*i64"}
FLOATS = {"qk_scale", "sm_scale", "dropout_p"}
INTS = {"H", "HKV", "GROUP"}


def _signature(fn, dtype, constexprs):
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in POINTERS:
            signature[name] = POINTERS[name]
        elif name[0].isupper() and name not in INTS:
            signature[name] = f"*{dtype}"
        else:
            signature[name] = "fp32" if name in FLOATS else "i32"
    return signature


def _resources(compiled):
    """'REG:n STACK:n' from the cubin (cuobjdump bundled with triton), or '' when it is not there."""
    import triton.backends.nvidia as nvidia

    cuobjdump = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
    if not os.path.exists(cuobjdump) or "cubin" not in compiled.asm:
        return ""
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
    out = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    os.unlink(f.name)
    found = re.search(r"REG:\d+ STACK:\d+", out)
    return found.group(0) if found else ""


def compile_all(capability: int, kernels_to_build=("forward", "dkdv", "dq")) -> None:
    """Compiles the forward, dK/dV and dQ kernels in their richest variant (bool mask + padding + causal + dropout,
    head dim 80 padded to 128, bf16) for ``sm_<capability>`` and prints their resources. Needs the kernels as
    JIT functions, i.e. a process without TRITON_INTERPRET."""
    from kernels.triton import attention_backward, attention_forward

    for name, fn in (("forward", attention_forward._forward_kernel), ("dkdv", attention_backward._dkdv_kernel),
                     ("dq", attention_backward._dq_kernel)):
        if name not in kernels_to_build:
            continue
        constexprs = dict(HEAD_DIM=80, BLOCK_D=128, BLOCK_M=64, BLOCK_N=64, MASK_KIND=1, HAS_KPM=True,
                          IS_CAUSAL=True, VARLEN=False, DROPOUT=True)
        if name == "forward":
            constexprs.update(CAUSAL_BOTTOM_RIGHT=False, HAS_SEQLENS_K=False, SPLIT=False)
        compiled = triton.compile(ASTSource(fn, _signature(fn, "bf16", constexprs), constexprs=constexprs),
                                  target=GPUTarget("cuda", capability, 32), options={"num_warps": 8, "num_stages": 2})
        assert compiled.asm["ptx"]
        print(f"{name} sm_{capability}: {_resources(compiled)} shared={compiled.metadata.shared}B", flush=True)


@pytest.mark.slow
@pytest.mark.parametrize("capability,names", [(90, "forward,dkdv,dq"), (80, "forward")])
def test_kernels_compile_for_the_gpu(capability, names):
    """sm_90 (the reference GPU): every kernel; sm_80: the forward (the backward shares its constructs)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    run = subprocess.run([sys.executable, os.path.abspath(__file__), str(capability), names], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    print(run.stdout)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count(f"sm_{capability}") == len(names.split(","))


if __name__ == "__main__":
    compile_all(int(sys.argv[1]), tuple(sys.argv[2].split(",")))
