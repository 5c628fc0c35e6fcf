"""``--op attention``: attention forward, backward, forward+backward.

Shapes follow the published comparisons (performance.md): B*S = 16k tokens, hidden 2048 (H = 2048 / D), seq 512 to
16k, head dims 64 and 128, non-causal and causal, plus a key-padding mask and an arbitrary boolean mask (where SDPA
leaves its flash kernel). FLOPs use flash-attn's convention: forward 4*B*H*S*S*D (x0.5 causal), backward 2.5x.

Providers: SDPA with each backend forced (``torch.nn.attention.sdpa_kernel``), eager math (the plain PyTorch
reference), ``torch.compile`` of it, flash-attn when importable, and our triton and native backends.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

import kernels
from benchmarks.suite import Case, SuiteConfig, Unavailable, compiled, probe, suite, timed_closure
from kernels import reference

VARIANTS = ("none", "causal", "padding", "mask")
SDPA_BACKENDS = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-efficient": "EFFICIENT_ATTENTION",
                 "sdpa-cudnn": "CUDNN_ATTENTION", "sdpa-math": "MATH"}
EAGER_MAX_SEQ = 8192  # the eager reference materialises (S, S) scores per head; beyond this it only measures memory
COMPILE_MAX_SEQ = 4096  # torch.compile of the reference: compiled once per shape and mode, so only up to here


def _shapes(config: SuiteConfig):
    """(B, S, H, D, variants). The default GPU sweep fits gpu_check.sh's 10 minutes; ATTENTION_SWEEP=full gives the
    published one (every length 512..16k, both head dims, every variant)."""
    if config.device.type == "cpu":
        # (4, 512, 8, 64): the CPU target shape of the native-attention issue.
        sizes = [(1, 256, 4, 64)] if config.quick else [(4, 512, 8, 64), (1, 1024, 4, 64)]
        return [(*size, VARIANTS[:3] if config.quick else VARIANTS) for size in sizes]
    if config.quick:
        return [(4, 1024, 16, 128, VARIANTS[:3])]
    tokens, hidden = 16384, 2048
    if os.environ.get("ATTENTION_SWEEP") == "full":
        return [(tokens // seq, seq, hidden // head_dim, head_dim, VARIANTS) for head_dim in (64, 128)
                for seq in (512, 1024, 2048, 4096, 8192, 16384)]
    return ([(tokens // seq, seq, hidden // 128, 128, VARIANTS) for seq in (1024, 4096, 16384)]
            + [(tokens // 4096, 4096, hidden // 64, 64, VARIANTS[:2])])


def _masks(variant, batch, seq, device):
    """(attn_mask, key_padding_mask) of a variant: padding gives the sequences of a batch the lengths S, 3S/4, S/2,
    7S/8 (repeating; 22% of the keys are padding, as in a length-bucketed batch); the arbitrary mask keeps a random 90%
    of (query, key) pairs, shared over batch and heads."""
    if variant == "padding":
        padding = torch.zeros(batch, seq, dtype=torch.bool, device=device)
        for b in range(batch):
            padding[b, seq * (8, 6, 4, 7)[b % 4] // 8:] = True
        return None, padding
    if variant == "mask":
        return torch.rand(seq, seq, device=device) > 0.1, None
    return None, None


def _sdpa_mask(attn_mask, key_padding_mask):
    """The same masking as one SDPA ``attn_mask`` (True = take part)."""
    if key_padding_mask is not None:
        return ~key_padding_mask[:, None, None, :]
    return attn_mask


@suite("attention")
def cases(config: SuiteConfig):
    device, dtype = config.device, config.dtype
    for batch, seq, heads, head_dim, variants in _shapes(config):
        for variant in variants:
            attn_mask, key_padding_mask = _masks(variant, batch, seq, device)
            is_causal = variant == "causal"
            sdpa_mask = _sdpa_mask(attn_mask, key_padding_mask)
            forward_flops = 4 * batch * heads * seq * seq * head_dim * (0.5 if is_causal else 1.0)
            for mode in config.modes:
                q, k, v = (torch.randn(batch, heads, seq, head_dim, device=device, dtype=dtype,
                                       requires_grad=mode != "fwd") for _ in range(3))
                inputs = [q, k, v]

                def sdpa(backend_name, q=q, k=k, v=v, inputs=inputs, mode=mode, mask=sdpa_mask, causal=is_causal):
                    def setup():
                        from torch.nn.attention import SDPBackend, sdpa_kernel

                        backend = getattr(SDPBackend, backend_name, None)
                        if backend is None:
                            raise Unavailable(f"SDPBackend.{backend_name} is not in this torch")

                        def call():
                            with sdpa_kernel(backend):
                                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
                        try:
                            call()
                        except RuntimeError as error:
                            raise Unavailable(f"SDPA {backend_name} refuses this call: "
                                              f"{str(error).splitlines()[0][:160]}") from error
                        return timed_closure(call, inputs, mode)
                    return setup

                def eager(q=q, k=k, v=v, inputs=inputs, mode=mode, am=attn_mask, kpm=key_padding_mask,
                          causal=is_causal, seq=seq):
                    if seq > EAGER_MAX_SEQ:
                        raise Unavailable(f"eager materialises (S, S) scores; skipped above S={EAGER_MAX_SEQ}")
                    return timed_closure(lambda: reference.scaled_dot_product_attention(
                        q, k, v, am, is_causal=causal, key_padding_mask=kpm), inputs, mode)

                def torch_compile(q=q, k=k, v=v, inputs=inputs, mode=mode, am=attn_mask, kpm=key_padding_mask,
                                  causal=is_causal, seq=seq):
                    if seq > COMPILE_MAX_SEQ:
                        raise Unavailable(f"torch.compile of the reference: skipped above S={COMPILE_MAX_SEQ}")
                    fn = compiled(reference.scaled_dot_product_attention)
                    return timed_closure(lambda: fn(q, k, v, am, is_causal=causal, key_padding_mask=kpm), inputs,
                                         mode)

                def flash_attn(q=q, k=k, v=v, mode=mode, variant=variant, causal=is_causal):
                    try:
                        from flash_attn import flash_attn_func
                    except ImportError as error:
                        raise Unavailable("flash-attn is not installed") from error
                    if variant in ("padding", "mask"):
                        raise Unavailable("flash-attn takes no arbitrary mask / dense key padding mask")
                    # flash-attn's layout is (B, S, H, D): leaves of that layout, so its gradients are timed.
                    qs, ks, vs = (t.detach().transpose(1, 2).contiguous().requires_grad_(mode != "fwd")
                                  for t in (q, k, v))
                    return timed_closure(lambda: flash_attn_func(qs, ks, vs, causal=causal), [qs, ks, vs], mode)

                def ours(backend, q=q, k=k, v=v, inputs=inputs, mode=mode, am=attn_mask, kpm=key_padding_mask,
                         causal=is_causal):
                    def setup():
                        def call():
                            return kernels.scaled_dot_product_attention(q, k, v, am, is_causal=causal,
                                                                        key_padding_mask=kpm, backend=backend)
                        with torch.no_grad():
                            probe(call)
                        return timed_closure(call, inputs, mode)
                    return setup

                providers = {name: sdpa(backend) for name, backend in SDPA_BACKENDS.items()}
                providers.update({"eager": eager, "torch.compile": torch_compile, "flash-attn": flash_attn,
                                  "triton": ours("triton"), "native": ours("native")})
                factor = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}[mode]
                yield Case(op="attention", mode=mode, dtype=dtype, device=device,
                           shape={"B": batch, "S": seq, "H": heads, "D": head_dim},
                           providers=providers, flops=factor * forward_flops,
                           label={"none": "", "causal": "causal", "padding": "key padding mask",
                                  "mask": "arbitrary mask"}[variant])
