"""One step of each mode as a closure, the default loss, the tokens a step processes, and an optimizer rebuilt for a
copy of the model.

* ``train``: forward, loss, backward, optimizer step, gradients reset (``set_to_none``);
* ``inference``: one forward under ``torch.no_grad``;
* ``generate``: ``model.generate(..., max_new_tokens=n)`` (Hugging Face models also get ``min_new_tokens=n``, so every
  step decodes the same number of tokens); a model without ``generate`` is decoded greedily without a cache, its
  forward taking the token ids ``(B, T)`` first and returning logits ``(B, T, V)`` (or a tuple / output object whose
  first entry or ``.logits`` they are).
With ``annotate`` the phases of a step are ``record_function`` ranges (``forward``, ``loss``, ``backward``,
``optimizer``), for the profiled steps only: the timed steps run without them.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

PHASES = {"step": "other", "forward": "layer", "loss": "other", "backward": "other", "optimizer": "other",
          "generate": "layer"}  # range name -> block ("layer": transparent, the ops inside decide)


def call(model: nn.Module, inputs: tuple[tuple, dict]):
    args, kwargs = inputs
    return model(*args, **kwargs)


def default_loss(output) -> torch.Tensor:
    """The model's own loss when it returns one (a 0-dim tensor, ``.loss``, or the first 0-dim tensor of a tuple);
    otherwise the mean of its first floating output, a stand-in whose backward reaches every output."""
    loss = getattr(output, "loss", None)
    if isinstance(loss, torch.Tensor) and loss.dim() == 0:
        return loss
    candidates = list(output.values()) if isinstance(output, dict) else (
        list(output) if isinstance(output, (tuple, list)) else [output])
    tensors = [t for t in candidates if isinstance(t, torch.Tensor) and t.is_floating_point()]
    for tensor in tensors:
        if tensor.dim() == 0:
            return tensor
    if not tensors:
        raise TypeError(f"the model's output ({type(output).__name__}) holds no floating tensor to take a loss of: "
                        "pass `loss_fn`")
    return tensors[0].float().mean()


def logits_of(output) -> torch.Tensor:
    logits = getattr(output, "logits", None)
    if logits is None:
        logits = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise TypeError("mode='generate' on a model without `generate` needs a forward that returns logits (B, T, V); "
                        f"got {type(output).__name__}")
    return logits


def greedy_decode(model: nn.Module, inputs: tuple[tuple, dict], new_tokens: int) -> torch.Tensor:
    """Greedy decoding without a cache: the whole sequence again for every new token."""
    (ids, *rest), kwargs = inputs
    for _ in range(new_tokens):
        logits = logits_of(model(ids, *rest, **kwargs))
        ids = torch.cat([ids, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return ids


def _generate(model, inputs, new_tokens):
    generate = getattr(model, "generate", None)
    if generate is None:
        return greedy_decode(model, inputs, new_tokens)
    args, kwargs = inputs
    extra = {"max_new_tokens": new_tokens}
    if hasattr(model, "generation_config"):  # Hugging Face: no early stop at EOS, no warning about the pad id
        extra.update(min_new_tokens=new_tokens, do_sample=False)
        if getattr(model.generation_config, "pad_token_id", None) is None:
            extra["pad_token_id"] = getattr(model.generation_config, "eos_token_id", None) or 0
    return generate(*args, **kwargs, **extra)


def make_step(model: nn.Module, inputs: tuple[tuple, dict], mode: str, *, loss_fn: Callable | None = None,
              optimizer: torch.optim.Optimizer | None = None, new_tokens: int = 16, annotate: bool = False,
              grad_for_inference: bool = False) -> Callable[[], Any]:
    """The closure of one step of ``mode``. ``grad_for_inference``: the inference forward with gradients on (for the
    FLOP counter; see flops.py)."""
    def phase(name):
        return torch.autograd.profiler.record_function(name) if annotate else contextlib.nullcontext()

    if mode == "train":
        loss_of = loss_fn or default_loss

        def step():
            with phase("step"):
                with phase("forward"):
                    output = call(model, inputs)
                with phase("loss"):
                    loss = loss_of(output)
                with phase("backward"):
                    loss.backward()
                with phase("optimizer"):
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            return loss
    elif mode == "inference":
        grad = contextlib.nullcontext() if grad_for_inference else torch.no_grad()

        def step():
            with phase("step"), phase("forward"), grad:
                return call(model, inputs)
    else:
        def step():
            with phase("step"), phase("generate"), torch.no_grad():
                return _generate(model, inputs, new_tokens)
    return step


def rebuilt_optimizer(optimizer: torch.optim.Optimizer, parameter_map: dict[int, nn.Parameter]):
    """A fresh optimizer of ``optimizer``'s class and hyper-parameters over the copies of its parameters
    (``parameter_map``: id of an original parameter -> its copy); its state starts empty."""
    groups = []
    for group in optimizer.param_groups:
        settings = {key: value for key, value in group.items() if key != "params"}
        groups.append({**settings, "params": [parameter_map[id(p)] for p in group["params"]]})
    return type(optimizer)(groups, **optimizer.defaults)


def count_tokens(inputs: tuple[tuple, dict]) -> int | None:
    """Tokens in one step's inputs: the ones of ``attention_mask`` when given; else the first integer tensor's
    elements (token ids ``(B, S)``); else the first floating tensor's positions (``(B, S, E)`` -> ``B * S``)."""
    args, kwargs = inputs
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        return int(mask.sum())
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    for tensor in tensors:
        if not tensor.is_floating_point() and tensor.dtype != torch.bool:
            return tensor.numel()
    for tensor in tensors:
        if tensor.is_floating_point() and tensor.dim() >= 2:
            return tensor.numel() // tensor.shape[-1]
    return None
