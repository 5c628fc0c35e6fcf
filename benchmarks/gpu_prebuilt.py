"""The CUDA extension prebuilt on the CPU machine for the GPU machine (benchmarks/gpu_prebuild.sh), and whether a
machine can use it (benchmarks/gpu_check.sh).

A prebuilt ``kernels/_C*.so`` is usable where these tags, written beside it in ``manifest.json``, match the machine:

    python_tag   the extension-module suffix of the interpreter (".cpython-312-x86_64-linux-gnu.so")
    torch        torch.__version__ of the build ("2.11.0+cu130"): libtorch's C++ ABI changes between releases
    cuda         torch.version.cuda ("13.0"): the CUDA runtime/cuBLASLt sonames the .so needs (libcudart.so.13)
    cxx11_abi    torch._C._GLIBCXX_USE_CXX11_ABI: std::string / std::list layouts across the torch boundary
    arch         TORCH_CUDA_ARCH_LIST ("9.0"): sm_90 machine code, so the GPU's capability must be 9.0
    sources      a hash of csrc/ and setup.py: a .so built from other sources is stale

``python -m benchmarks.gpu_prebuilt write SO PREBUILT_DIR`` (run by the build's interpreter) verifies the .so
(symbols, needed libraries, cubins, size) and writes the manifest; ``... check PREBUILT_DIR`` (run on the GPU
machine) prints why it cannot be used and exits 1, or exits 0.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_BYTES = 40 << 20  # what travels to the GPU machine with the checkout (64 MiB in all)
TAGS = ("python_tag", "torch", "cuda", "cxx11_abi", "arch", "sources")
# What a loadable extension must hold. Before stripping, the static objects whose constructors register the ops:
REGISTRATIONS = ("TORCH_LIBRARY_static_init_kernels", "TORCH_LIBRARY_IMPL_static_init_kernels_CPU",
                 "TORCH_LIBRARY_IMPL_static_init_kernels_CUDA")
# After stripping: the module's entry point, and the libraries it links (found already loaded by `import torch`;
# the linker's --as-needed leaves out those it takes no symbol from, e.g. libtorch_cuda.so).
EXPORTED = ("PyInit__C",)
NEEDED = ("libc10.so", "libtorch_cpu.so", "libc10_cuda.so", "libcudart.so.13", "libcublasLt.so.13")


def source_hash(root: str = ROOT) -> str:
    """sha256 over the paths and contents of csrc/** and setup.py (what the .so is compiled from)."""
    digest = hashlib.sha256()
    files = sorted(glob.glob(os.path.join(root, "csrc", "**", "*"), recursive=True)) + [os.path.join(root, "setup.py")]
    for path in files:
        if os.path.isfile(path) and "__pycache__" not in path:
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as source:
                digest.update(source.read())
    return digest.hexdigest()[:16]


def machine_tags() -> dict:
    """The tags of the running interpreter and torch (the arch of GPU 0 where one is visible, else None)."""
    import torch

    arch = None
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        arch = f"{major}.{minor}"
    return {
        "python_tag": sysconfig.get_config_var("EXT_SUFFIX"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "arch": arch,
        "sources": source_hash(),
    }


def _tool(name: str) -> str:
    """readelf / nm / cuobjdump from PATH; cuobjdump else from Triton's package (the CPU machine's toolkit has none)."""
    found = shutil.which(name)
    if found is None and name == "cuobjdump":
        import triton

        found = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if found is None or not os.path.exists(found):
        raise SystemExit(f"gpu_prebuilt: {name} not found")
    return found


def _run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def verify(unstripped: str, stripped: str) -> dict:
    """Checks the build and returns what it found; raises SystemExit naming what is missing."""
    problems = []
    local = _run(_tool("nm"), "-C", unstripped)  # demangled: the registrations are static C++ functions
    for prefix in REGISTRATIONS:
        if not re.search(rf"\b{prefix}\w*", local):
            problems.append(f"no {prefix}* symbol (the op registration) in {unstripped}")
    exported = _run(_tool("nm"), "-D", "--defined-only", stripped)
    for symbol in EXPORTED:
        if not re.search(rf"\b{symbol}\b", exported):
            problems.append(f"{symbol} is not exported by {stripped}")
    dynamic = _run(_tool("readelf"), "-d", stripped)
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)
    problems += [f"{stripped} does not link {lib}" for lib in NEEDED if lib not in needed]
    elves = _run(_tool("cuobjdump"), "--list-elf", stripped)
    archs = sorted(set(re.findall(r"\.(sm_\d+a?)\.cubin", elves)))
    if archs != ["sm_90"]:
        problems.append(f"cubins for {archs or 'no architecture'}, expected sm_90 only")
    size = os.path.getsize(stripped)
    if size >= MAX_BYTES:
        problems.append(f"{size / 2**20:.1f} MiB, expected under {MAX_BYTES >> 20} MiB")
    glibc = sorted(set(re.findall(r"GLIBC_(\d+\.\d+)", _run(_tool("readelf"), "-V", stripped))),
                   key=lambda v: tuple(map(int, v.split("."))))
    if not problems:
        problems += _load_problems(stripped)
    if problems:
        raise SystemExit("gpu_prebuilt: the build is not usable:\n  " + "\n  ".join(problems))
    return {"bytes": size, "needed": needed, "cubins": archs, "glibc_max": glibc[-1] if glibc else None,
            "registrations": list(REGISTRATIONS), "exported": list(EXPORTED)}


def _load_problems(so_path: str) -> list[str]:
    """Loads the .so into this interpreter's torch (a fresh process; no GPU needed: its symbols resolve against
    libtorch, which is the ABI check that counts) and runs its CPU residual_add; [] or what went wrong."""
    check = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import _C; assert _C.with_cuda, 'built without CUDA'; "
             "x = torch.arange(4.0); assert torch.equal(torch.ops.kernels.residual_add(x, x), 2 * x)")
    done = subprocess.run([sys.executable, "-c", check, os.path.dirname(os.path.abspath(so_path))],
                          capture_output=True, text=True)
    return [] if done.returncode == 0 else [f"it does not load into torch {_torch_version()}: "
                                            f"{done.stderr.strip().splitlines()[-1:]}"]


def _torch_version() -> str:
    import torch

    return torch.__version__


def write(unstripped: str, stripped: str, prebuilt_dir: str, seconds: float) -> dict:
    tags = machine_tags()
    tags["arch"] = os.environ.get("TORCH_CUDA_ARCH_LIST")
    manifest = {**tags, "file": os.path.basename(stripped), "build_seconds": round(seconds),
                "checks": verify(unstripped, stripped)}
    with open(os.path.join(prebuilt_dir, "manifest.json"), "w") as out:
        json.dump(manifest, out, indent=2)
        out.write("\n")
    return manifest


def mismatches(manifest: dict, machine: dict) -> list[str]:
    """The tags on which the prebuilt .so and this machine differ ("tag: prebuilt X, here Y")."""
    return [f"{tag}: prebuilt {manifest.get(tag)!r}, here {machine.get(tag)!r}"
            for tag in TAGS if manifest.get(tag) != machine.get(tag)]


def check(prebuilt_dir: str) -> int:
    path = os.path.join(prebuilt_dir, "manifest.json")
    if not os.path.isfile(path):
        print(f"prebuilt: none ({path} missing)")
        return 1
    with open(path) as source:
        manifest = json.load(source)
    differ = mismatches(manifest, machine_tags())
    if differ:
        print("prebuilt: not usable here; " + "; ".join(differ))
        return 1
    print(f"prebuilt: tags match ({manifest['torch']}, CUDA {manifest['cuda']}, sm_{manifest['arch'].replace('.', '')},"
          f" sources {manifest['sources']})")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["write"] and len(argv) == 5:
        manifest = write(argv[1], argv[2], argv[3], float(argv[4]))
        print(json.dumps(manifest, indent=2))
        return 0
    if argv[:1] == ["check"] and len(argv) == 2:
        return check(argv[1])
    print("usage: python -m benchmarks.gpu_prebuilt write UNSTRIPPED_SO STRIPPED_SO PREBUILT_DIR SECONDS\n"
          "       python -m benchmarks.gpu_prebuilt check PREBUILT_DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
