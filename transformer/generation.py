"""Token choice for generation (greedy, or sampling with temperature and top-k), the CUDA-graph replay of a decoding
step, and model-wide backend setting.

Nothing here synchronises with the device: ``next_token`` reads no tensor value on the host, so a decoding loop issues
its steps without waiting for the GPU."""

from __future__ import annotations

import torch
from torch import nn


def next_token(logits, *, do_sample=False, temperature=1.0, top_k=None, generator=None):
    """The next token of each row of ``logits`` ``(B, V)``, as ``(B, 1)``: the argmax, or a sample of
    ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens."""
    if not do_sample:
        return logits.argmax(dim=-1, keepdim=True)
    if temperature <= 0:
        raise ValueError(f"argument `temperature` must be > 0 when sampling; got {temperature}")
    logits = logits.float() / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"argument `top_k` must be >= 1; got {top_k}")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Sets the kernel backend of every fused module in ``model`` (those with a ``backend`` attribute)."""
    for module in model.modules():
        if isinstance(getattr(module, "backend", None), str):
            module.backend = backend
    return model


class CUDAGraphStep:
    """``fn(*inputs)`` captured once in a CUDA graph, then replayed: ``step(*new_inputs)`` copies the new inputs into
    the captured (static) ones, replays the graph and returns the captured output, which the next replay overwrites.

    ``fn`` must have fixed shapes and no host synchronisation (e.g. ``GPT.decode_step`` over static caches). It runs
    ``warmup`` times on a side stream before the capture (as CUDA graphs require); ``state`` lists the tensors that
    ``fn`` advances in place (the caches' lengths), restored after the warm-up so that the first replay is the first
    step. The warm-up writes past each cache's length only, which later steps overwrite."""

    def __init__(self, fn, *inputs, state=(), warmup: int = 2):
        self.inputs = tuple(t.clone() for t in inputs)
        saved = [t.clone() for t in state]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        for tensor, value in zip(state, saved):
            tensor.copy_(value)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = fn(*self.inputs)

    def __call__(self, *inputs):
        for static, new in zip(self.inputs, inputs):
            static.copy_(new)
        self.graph.replay()
        return self.output
