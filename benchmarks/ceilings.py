"""The machine's two ceilings, measured in the same run as the kernels: memory bandwidth (a large device-to-device
copy; bytes read + written) and the matmul rate (a large ``torch.matmul``: bf16 on a GPU, fp32 on the CPU)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .timing import measure


@dataclass(frozen=True)
class Ceilings:
    bandwidth_gbs: float
    matmul_tflops: float
    matmul_dtype: str
    copy_bytes: int
    matmul_size: int

    def as_dict(self) -> dict:
        return asdict(self)


def measure_ceilings(device: torch.device, quick: bool = False) -> Ceilings:
    if device.type == "cuda":
        copy_bytes = (256 if quick else 2048) * 1024 * 1024
        size, dtype = (4096 if quick else 8192), torch.bfloat16
    else:
        copy_bytes = (64 if quick else 256) * 1024 * 1024
        size, dtype = (1024 if quick else 2048), torch.float32
    source = torch.randn(copy_bytes // 4, device=device)
    target = torch.empty_like(source)
    copy = measure(lambda: target.copy_(source), device, budget_s=1.0)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    matmul = measure(lambda: torch.matmul(a, b), device, budget_s=1.0)
    return Ceilings(
        bandwidth_gbs=2 * copy_bytes / copy.median_s / 1e9,
        matmul_tflops=2 * size**3 / matmul.median_s / 1e12,
        matmul_dtype=str(dtype).replace("torch.", ""),
        copy_bytes=copy_bytes,
        matmul_size=size,
    )
