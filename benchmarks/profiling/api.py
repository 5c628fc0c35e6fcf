"""``benchmarks.profile_model``: where the time of a whole model's step goes, before and after ``transformer.swap``.

A run, per variant (``"eager"``: the model as given; ``"swapped"``: a deep copy passed through ``transformer.swap``
and set to ``backend``, same weights, same inputs):
1. warm-up steps, over which the peak memory is measured;
2. the timing phase: ``steps`` steps with the profiler off, the variants in turns (the reported step time);
3. one step under ``FlopCounterMode`` (model FLOPs per step; MFU against the measured matmul ceiling);
4. the profiling phase: ``profile_steps`` steps under ``torch.profiler`` with a range per module and per phase
   (``record_function``; NVTX too on CUDA), attributed to blocks (blocks.py), exported as a Chrome trace.
The caller's model is never changed: variants that train, and every swapped variant, run on deep copies (with a
copy of the caller's optimizer: same class and settings, fresh state); inference on the model as given runs on it,
its train/eval mode restored afterwards.
"""

from __future__ import annotations

import copy
import os
from functools import lru_cache

import torch
from torch import nn

import kernels
import transformer

from ..ceilings import Ceilings, measure_ceilings
from ..records import environment
from . import outputs
from .blocks import BLOCKS, ModuleRanges, attribute
from .flops import count_step_flops
from .measure import peak_memory, time_steps
from .profile import Profile, VariantProfile
from .steps import PHASES, count_tokens, make_step, rebuilt_optimizer

MODES = ("train", "inference", "generate")
SWAPS = (True, False, "both")
_BACKENDS = ("auto",) + tuple(kernels.BACKENDS)


def profile_model(model: nn.Module, example_inputs, *, mode: str = "train", steps: int = 20, warmup: int = 3,
                  swap: bool | str = "both", backend: str = "auto", loss_fn=None, optimizer=None, out=None,
                  tokens: int | None = None, new_tokens: int = 16, profile_steps: int = 3,
                  ceilings: Ceilings | dict | None = None, label: str | None = None, progress: bool = False,
                  top: int = 12) -> Profile:
    """Profiles ``model``'s steps on ``example_inputs`` and returns a :class:`Profile` (printable; ``.to_json()``).

    ``example_inputs``: a tensor, a tuple/list of positional arguments, or a dict of keyword arguments, on the
    model's device. ``mode``: ``"train"`` (forward, loss, backward, optimizer step), ``"inference"`` (a forward
    without gradients) or ``"generate"`` (``model.generate(..., max_new_tokens=new_tokens)``; greedy decoding
    without a cache for a model that has no ``generate``). ``swap``: ``False`` profiles the model as given, ``True``
    a swapped copy, ``"both"`` the two side by side. ``backend``: the kernels the swapped copy runs
    (``transformer.swap``'s ``backend``). ``loss_fn(output) -> scalar`` (train; default: the model's own loss when
    it returns one, else the mean of its output). ``optimizer`` (train; default AdamW, lr 1e-5): copied for each
    variant. ``out``: a folder for ``profile.json``, a Chrome trace per variant and ``blocks.png``.
    ``tokens``: tokens per step when they cannot be counted from the inputs (train/inference: the ones of
    ``attention_mask``, else the token ids' elements; generate: batch x ``new_tokens``). ``ceilings``: the
    machine's measured ceilings (default: measured once per device and process, ``benchmarks.ceilings``).
    ``top``: how many ops (CPU) or kernels (CUDA) each variant lists, by self time.
    """
    inputs = _check_arguments(model, example_inputs, mode, steps, warmup, swap, backend, loss_fn, optimizer, out,
                              tokens, new_tokens, profile_steps, top)
    device = _device_of(model, inputs)
    variant_names = ["eager"] if swap is False else ["swapped"] if swap is True else ["eager", "swapped"]
    ceilings = _ceilings(ceilings, device)
    was_training = model.training
    progress_bar = _progress_bar(progress, steps + len(variant_names) * (warmup + profile_steps + 2),
                                 label or type(model).__name__)
    if out is not None:
        os.makedirs(out, exist_ok=True)
    try:
        variants = {name: _Variant(name, model, inputs, mode, backend, loss_fn, optimizer, new_tokens)
                    for name in variant_names}
        for i, variant in enumerate(variants.values()):
            variant.warm_up(warmup, device, progress_bar, first=i == 0)
        timings = time_steps({name: v.step for name, v in variants.items()}, steps, device,
                             progress=progress_bar.update if progress_bar else None)
        results = []
        for name, variant in variants.items():
            flops = variant.count_flops()
            trace = None if out is None else os.path.join(out, f"trace-{name}.json")
            attribution = variant.profile(profile_steps, device, trace, progress_bar, top)
            results.append(_variant_profile(variant, timings[name], steps, flops, attribution, profile_steps,
                                            ceilings, _tokens_per_step(tokens, inputs, mode, new_tokens), trace))
            if progress_bar:
                progress_bar.update()
    finally:
        model.train(was_training)
        if progress_bar:
            progress_bar.close()
    profile = Profile(model=label or type(model).__name__, mode=mode, device=device.type, dtype=_dtype_of(model),
                      backend=backend, warmup=warmup, ceilings=ceilings.as_dict(), environment=environment(device),
                      variants=results, notes=_notes(variants, ceilings, model, backend))
    if out is not None:
        outputs.write(profile, out)
    return profile


class _Variant:
    """One variant's model, optimizer and step closures."""

    def __init__(self, name, model, inputs, mode, backend, loss_fn, optimizer, new_tokens):
        self.name, self.mode, self.inputs = name, mode, inputs
        self.swap_report = None
        if name == "eager" and mode != "train":
            self.model, parameter_map = model, None
        else:
            self.model, parameter_map = _deep_copy(model)
        if name == "swapped":
            self.swap_report = str(transformer.swap(self.model, backend=backend))
            transformer.set_backend(self.model, backend)  # the package's own modules too (already fused)
        self.model.train(mode == "train")
        self.optimizer = None
        if mode == "train":
            self.optimizer = (rebuilt_optimizer(optimizer, parameter_map) if optimizer is not None
                              else torch.optim.AdamW(self.model.parameters(), lr=1e-5))
        self._settings = {"loss_fn": loss_fn, "optimizer": self.optimizer, "new_tokens": new_tokens}
        self.step = make_step(self.model, inputs, mode, **self._settings)
        self.peak_memory_bytes = None

    def warm_up(self, count, device, progress_bar, *, first=False):
        """``count`` steps; the run's ``first`` step names the inputs when the model rejects them."""
        with peak_memory(device) as memory:
            for i in range(count):
                if first and i == 0:
                    _first_step(self.step, self.mode)
                else:
                    self.step()
                if progress_bar:
                    progress_bar.update()
        self.peak_memory_bytes = memory["bytes"] if count else None

    def count_flops(self) -> int:
        step = make_step(self.model, self.inputs, self.mode, grad_for_inference=True, **self._settings)
        return count_step_flops(step)

    def profile(self, count, device, trace, progress_bar, top):
        """``count`` steps under the profiler (one more before them warms it up, unrecorded); ``top`` ops listed."""
        step = make_step(self.model, self.inputs, self.mode, annotate=True, **self._settings)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        schedule = torch.profiler.schedule(wait=0, warmup=1, active=count, repeat=1)
        with ModuleRanges(self.model, nvtx=device.type == "cuda") as ranges:
            with torch.profiler.profile(activities=activities, schedule=schedule) as prof:
                for _ in range(count + 1):
                    step()
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    prof.step()
                    if progress_bar:
                        progress_bar.update()
        if trace is not None:
            prof.export_chrome_trace(trace)
        return attribute(prof.events(), {**PHASES, **ranges.blocks}, device=device.type, top=top)


def _variant_profile(variant, timing, steps, flops, attribution, profile_steps, ceilings, tokens, trace):
    median = timing.median_s
    total = attribution.total_seconds
    blocks = {b: {"seconds": attribution.block_seconds[b] / profile_steps,
                  "share": attribution.block_seconds[b] / total if total else 0.0} for b in BLOCKS}
    top = [{**row, "seconds": row["seconds"] / profile_steps, "calls": row["calls"] / profile_steps}
           for row in attribution.top]
    achieved = flops / median / 1e12 if median else 0.0
    return VariantProfile(
        name=variant.name, step_time_s={"median": median, "p20": timing.p20_s, "p80": timing.p80_s}, steps=steps,
        tokens_per_step=tokens, tokens_per_s=None if tokens is None else tokens / median, flops_per_step=flops,
        achieved_tflops=achieved, mfu=achieved / ceilings.matmul_tflops if ceilings.matmul_tflops else None,
        peak_memory_bytes=variant.peak_memory_bytes,
        parameter_bytes=sum(p.numel() * p.element_size() for p in variant.model.parameters()),
        blocks=blocks, profiled_steps=profile_steps, profiled_time_s=total / profile_steps, top=top,
        ours_share=attribution.ours_seconds / total if total else 0.0, trace=trace, swap_report=variant.swap_report)


# -- arguments -------------------------------------------------------------------------------------------------------

def _check_arguments(model, example_inputs, mode, steps, warmup, swap, backend, loss_fn, optimizer, out, tokens,
                     new_tokens, profile_steps, top):
    """Validates every argument (errors name it); returns the inputs as ``(args tuple, kwargs dict)``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"argument `model` must be a torch.nn.Module; got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        inputs = ((example_inputs,), {})
    elif isinstance(example_inputs, (tuple, list)):
        inputs = (tuple(example_inputs), {})
    elif isinstance(example_inputs, dict) and all(isinstance(k, str) for k in example_inputs):
        inputs = ((), dict(example_inputs))
    else:
        raise TypeError("argument `example_inputs` must be a tensor, a tuple/list of positional arguments or a dict "
                        f"of keyword arguments; got {type(example_inputs).__name__}")
    if not _tensors(inputs):
        kinds = [type(v).__name__ for v in (*inputs[0], *inputs[1].values())]
        raise TypeError(f"argument `example_inputs` holds no tensor; got a {type(example_inputs).__name__} of {kinds}")
    if mode not in MODES:
        raise ValueError(f"argument `mode` must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
    for name, value, low in (("steps", steps, 1), ("warmup", warmup, 0), ("new_tokens", new_tokens, 1),
                             ("profile_steps", profile_steps, 1), ("top", top, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"argument `{name}` must be an int >= {low}; got {value!r}")
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
        raise ValueError(f"argument `tokens` must be a positive int or None; got {tokens!r}")
    if not any(swap is allowed for allowed in (True, False)) and swap != "both":
        raise ValueError(f"argument `swap` must be True, False or 'both'; got {swap!r}")
    if backend not in _BACKENDS:
        raise ValueError(f"argument `backend` must be one of {', '.join(map(repr, _BACKENDS))}; got {backend!r}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"argument `loss_fn` must be callable (output -> scalar tensor); got {type(loss_fn).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"argument `optimizer` must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
    for name, value in (("loss_fn", loss_fn), ("optimizer", optimizer)):
        if value is not None and mode != "train":
            raise ValueError(f"argument `{name}` applies to mode='train' only; got mode={mode!r}")
    if optimizer is not None:
        own = {id(p) for p in model.parameters()}
        if any(id(p) not in own for group in optimizer.param_groups for p in group["params"]):
            raise ValueError("argument `optimizer` holds parameters that are not the model's")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"argument `out` must be a folder path or None; got {type(out).__name__}")
    return inputs


def _first_step(step, mode):
    try:
        step()
    except (TypeError, ValueError, IndexError, RuntimeError) as error:
        message = f"argument `example_inputs`: the model's first {mode} step on them failed: {error}"
        try:
            wrapped = type(error)(message)
        except Exception:  # noqa: BLE001  (an error class with another constructor)
            wrapped = RuntimeError(message)
        raise wrapped from error


def _tensors(value) -> list[torch.Tensor]:
    """The tensors in ``value`` and in the tuples, lists and dicts it holds."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _device_of(model, inputs) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    tensors = _tensors(inputs)
    device = tensor.device if tensor is not None else tensors[0].device if tensors else torch.device("cpu")
    for t in tensors:
        if t.device != device:
            raise ValueError(f"argument `example_inputs`: a tensor on {t.device}, the model is on {device}")
    return device


def _dtype_of(model) -> str:
    floating = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return str(floating[0] if floating else torch.get_default_dtype()).replace("torch.", "")


def _deep_copy(model):
    """A deep copy of ``model`` and the map id(original parameter) -> its copy."""
    memo: dict = {}
    try:
        clone = copy.deepcopy(model, memo)
    except Exception as error:  # noqa: BLE001  (anything deepcopy raises, named)
        raise RuntimeError(f"profile_model needs a deep copy of the model for this run and copy.deepcopy failed: "
                           f"{error}; profile with swap=False and mode='inference' to run on the model itself") \
            from error
    return clone, {id(p): memo[id(p)] for p in model.parameters()}


def _tokens_per_step(tokens, inputs, mode, new_tokens):
    if tokens is not None:
        return tokens
    if mode == "generate":
        args, kwargs = inputs
        first = next((t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)), None)
        return None if first is None else first.shape[0] * new_tokens
    return count_tokens(inputs)


@lru_cache(maxsize=None)
def _measured_ceilings(device: torch.device) -> Ceilings:
    return measure_ceilings(device, quick=device.type == "cpu")


def _ceilings(given, device) -> Ceilings:
    if given is None:
        return _measured_ceilings(device)
    if isinstance(given, dict):
        return Ceilings(**given)
    if not isinstance(given, Ceilings):
        raise TypeError(f"argument `ceilings` must be benchmarks.ceilings.Ceilings, a dict of its fields or None; "
                        f"got {type(given).__name__}")
    return given


def _notes(variants, ceilings, model, backend) -> list[str]:
    notes = []
    dtype = _dtype_of(model)
    if dtype != ceilings.matmul_dtype:
        notes.append(f"note: MFU is against the {ceilings.matmul_dtype} matmul ceiling; the model runs in {dtype}")
    swapped = variants.get("swapped")
    if swapped is not None and swapped.swap_report.startswith("swapped 0 "):
        if any(isinstance(getattr(m, "backend", None), str) for m in swapped.model.modules()):
            notes.append(f"note: swap replaced no module: the model is built from the fused modules; the swapped "
                         f"copy runs them with backend={backend!r}")
        else:
            notes.append("note: swap found no module it supports in this model: both variants run the same code")
    return notes


def _progress_bar(enabled, total, description):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"profiling {description}", unit="step", leave=False)
