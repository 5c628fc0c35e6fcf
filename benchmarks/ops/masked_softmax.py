"""``--op masked_softmax``: ``softmax(scale * x + mask)``, memory-bound.

Bytes per call (performance.md): forward reads x and the mask (its own storage, not its broadcast size) and writes y;
backward reads y and dy and writes dx. Masks: a ``(B, 1, 1, Sk)`` bool padding mask, and causal (``is_causal``, no
mask tensor). Providers: eager (scale, mask, softmax), torch.compile of the same, our triton and native backends, and
the fused softmax of TransformerEngine / apex where installed (forward only; they take their own mask layouts).
"""

from __future__ import annotations

import torch

import kernels
from benchmarks.suite import Case, SuiteConfig, Unavailable, compiled, probe, suite, timed_closure

OP = "masked_softmax"


def _shapes(config: SuiteConfig):
    """(B, H, Sq, Sk) with rows = B * H * Sq >= 64k on a GPU; the CPU target shape on the CPU."""
    if config.device.type == "cpu":
        return [(2, 12, 128, 512)] if config.quick else [(8, 12, 512, 512), (2, 12, 128, 4096)]
    if config.quick:
        return [(16, 16, 256, 1024), (4, 16, 1024, 4096)]
    return [(64, 16, 64, 128), (32, 16, 128, 512), (16, 16, 256, 1024), (8, 16, 512, 2048), (4, 16, 1024, 4096),
            (2, 16, 2048, 8192), (1, 16, 4096, 16384)]


def _eager(scale, masked_out, causal_out):
    """Plain PyTorch as a user writes it: scale, fill the masked scores with -inf, softmax."""
    def fn(x):
        scores = x * scale
        if masked_out is not None:
            scores = scores.masked_fill(masked_out, float("-inf"))
        if causal_out is not None:
            scores = scores.masked_fill(causal_out, float("-inf"))
        return torch.softmax(scores, dim=-1)
    return fn


def _transformer_engine(x, mask, scale, is_causal):
    try:
        import transformer_engine_torch as tex
    except ImportError as error:
        raise Unavailable(f"TransformerEngine is not installed ({error})") from error
    if is_causal:
        b, h, sq, sk = x.shape
        if sq != sk:
            raise Unavailable("TransformerEngine's causal softmax needs Sq == Sk")
        flat = x.reshape(b * h, sq, sk)
        return lambda: tex.scaled_upper_triang_masked_softmax_forward(flat, scale)
    masked_out = (~mask).to(torch.uint8)  # TE: (B, 1, Sq or 1, Sk), nonzero = masked
    return lambda: tex.scaled_masked_softmax_forward(x, masked_out, scale)


def _apex(x, mask, scale, is_causal):
    try:
        import scaled_masked_softmax_cuda
        import scaled_upper_triang_masked_softmax_cuda
    except ImportError as error:
        raise Unavailable(f"apex fused softmax is not installed ({error})") from error
    if is_causal:
        b, h, sq, sk = x.shape
        if sq != sk:
            raise Unavailable("apex's causal softmax needs Sq == Sk")
        flat = x.reshape(b * h, sq, sk)
        return lambda: scaled_upper_triang_masked_softmax_cuda.forward(flat, scale)
    masked_out = (~mask).expand(-1, 1, x.shape[2], -1).to(torch.uint8)  # apex: (B, 1, Sq, Sk), nonzero = masked
    return lambda: scaled_masked_softmax_cuda.forward(x, masked_out, scale)


@suite(OP)
def cases(config: SuiteConfig):
    device, dtype = config.device, config.dtype
    for b, h, sq, sk in _shapes(config):
        for label in ("padding mask", "causal"):
            is_causal = label == "causal"
            x = torch.randn(b, h, sq, sk, device=device, dtype=dtype)
            scale = 0.125
            mask = None
            masked_out = causal_out = None
            if is_causal:
                causal_out = ~torch.ones(sq, sk, dtype=torch.bool, device=device).tril()
            else:
                lengths = torch.randint(sk // 2, sk + 1, (b,), device=device)
                mask = (torch.arange(sk, device=device) < lengths[:, None])[:, None, None, :]  # (B, 1, 1, Sk)
                masked_out = ~mask
            element = x.element_size()
            mask_bytes = 0 if mask is None else mask.numel() * mask.element_size()
            eager_fn = _eager(scale, masked_out, causal_out)
            for mode in ("fwd", "bwd"):
                def eager(mode=mode, x=x, eager_fn=eager_fn):
                    leaf = x.detach().requires_grad_(mode != "fwd")
                    return timed_closure(lambda: eager_fn(leaf), [leaf], mode)

                def torch_compile(mode=mode, x=x, eager_fn=eager_fn):
                    fn = compiled(eager_fn)
                    leaf = x.detach().requires_grad_(mode != "fwd")
                    return timed_closure(lambda: fn(leaf), [leaf], mode)

                def ours(backend, mode=mode, x=x, mask=mask, is_causal=is_causal):
                    def setup():
                        leaf = x.detach().requires_grad_(mode != "fwd")
                        call = lambda: kernels.masked_softmax(  # noqa: E731
                            leaf, mask, scale=scale, is_causal=is_causal, backend=backend)
                        probe(call)
                        return timed_closure(call, [leaf], mode)
                    return setup

                def peer(make, mode=mode, x=x, mask=mask, is_causal=is_causal):
                    def setup():
                        if mode != "fwd":
                            raise Unavailable("only the forward of this peer is benchmarked")
                        if device.type != "cuda":
                            raise Unavailable("CUDA only")
                        forward = make(x, mask, scale, is_causal)
                        return timed_closure(forward, [x], mode)
                    return setup

                providers = {"eager": eager, "torch.compile": torch_compile, "triton": ours("triton"),
                             "native": ours("native"), "transformer_engine": peer(_transformer_engine),
                             "apex": peer(_apex)}
                moved = (3 * x.numel() * element) if mode == "bwd" else (2 * x.numel() * element + mask_bytes)
                yield Case(op=OP, mode=mode, shape={"B": b, "H": h, "Sq": sq, "Sk": sk}, dtype=dtype, device=device,
                           providers=providers, bytes=moved, label=label)
