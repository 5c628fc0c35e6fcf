"""Where a step's time goes: profiler events attributed to the blocks of a transformer.

Blocks: ``attention``, ``norm`` (layer norm, RMS norm, the fused Add & Norm), ``feed_forward`` (the feed-forward
block and every linear projection), ``softmax`` (a softmax outside a fused attention kernel) and ``other``
(embeddings, residual adds outside a fused kernel, the loss, the optimizer, Python between the ops).

Two sources decide an event's block, innermost first:
1. the **op's name**: ``kernels::attention_forward``, ``aten::scaled_dot_product_attention``, ``aten::layer_norm``,
   ``aten::addmm`` under ``aten::linear``, ``aten::softmax`` (``log_softmax`` is the loss's), ... An op with a
   generic name (``aten::mm``, ``aten::mul``, copies) says nothing and the walk goes on to its parent;
2. the **module ranges** recorded while profiling (:class:`ModuleRanges`): ``record_function`` (and NVTX on CUDA)
   around every attention, norm, feed-forward/linear and embedding module, named ``"<block>: <qualified name>
   (<class>)"``, plus a range per transformer layer (``"layer: ..."``, transparent: it only labels the trace). So the
   ``aten::bmm`` of a hand-written attention counts as attention, the ``aten::mul`` of Llama's RMSNorm as a norm.
Backward ops run outside the forward's ranges: an autograd node is attributed like the forward op that created it
(the profiler's ``sequence_nr`` links them). Every event lands in exactly one block, so the shares add up to 100% of
the profiled time: CPU op self time on the CPU, CUDA kernel time on a GPU (kernels the profiler could not link to an
op count as ``other``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.autograd import DeviceType

import transformer

BLOCKS = ("attention", "norm", "feed_forward", "softmax", "other")
BLOCK_LABELS = {"attention": "attention", "norm": "norms", "feed_forward": "feed-forward/linear",
                "softmax": "softmax", "other": "other (embedding, loss, optimizer)"}
LAYER = "layer"  # transformer-layer ranges: shown in the trace, transparent for attribution

_EVALUATE_PREFIX = "autograd::engine::evaluate_function: "


def module_block(module: nn.Module) -> str | None:
    """The block a module's forward belongs to, ``"layer"`` for a whole transformer layer, or None (no range)."""
    name = type(module).__name__
    lower = name.lower()
    if isinstance(module, nn.MultiheadAttention) or "attention" in lower:
        return "attention"
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or lower.endswith("norm") or "layernorm" in lower:
        return "norm"
    if (isinstance(module, (nn.Linear, transformer.FeedForward)) or name == "Conv1D"
            or any(word in lower for word in ("mlp", "feedforward", "ffn", "intermediate"))):
        return "feed_forward"
    if isinstance(module, nn.Embedding):
        return "other"
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)) or lower.endswith(
            ("layer", "block")):
        return LAYER
    return None


def op_block(name: str) -> str | None:
    """The block an op's name pins down, or None for a generic op (mm, elementwise, copies, views)."""
    key = name.lower().replace("_", "")
    if "logsoftmax" in key or "crossentropy" in key or "nllloss" in key or "embedding" in key:
        return "other"
    if "attention" in key or "sdpa" in key:
        return "attention"
    if "softmax" in key:
        return "softmax"
    if "layernorm" in key or "rmsnorm" in key or "residualadd" in key:
        return "norm"
    if ("linear" in key or "addmm" in key or "feedforward" in key or (key.startswith("kernels::") and "matmul" in key)
            or any(act in key for act in ("gelu", "silu", "relu", "swiglu", "geglu"))):
        return "feed_forward"
    if key.startswith("optimizer."):
        return "other"
    return None


def is_ours(name: str) -> bool:
    """Whether an op is one of this package's: a ``kernels::`` op or the autograd glue of one."""
    return name.startswith("kernels::") or "_kernels_" in name


class ModuleRanges(contextlib.AbstractContextManager):
    """Forward hooks that open a ``record_function`` range (and an NVTX range when ``nvtx``) around every classified
    module of ``model`` while the context is active; the model's classes are not touched. ``blocks`` maps each range
    name to its block (or ``"layer"``)."""

    def __init__(self, model: nn.Module, *, nvtx: bool = False):
        self.model = model
        self.nvtx = nvtx
        self.blocks: dict[str, str] = {}
        self._handles: list = []
        self._open: list = []
        self._patched: list[nn.Module] = []

    def __enter__(self):
        for qualified, module in self.model.named_modules():
            block = module_block(module)
            if block is None:
                continue
            name = f"{block}: {qualified or '(root)'} ({type(module).__name__})"
            self.blocks[name] = block
            self._handles.append(module.register_forward_pre_hook(self._opener(name)))
            self._handles.append(module.register_forward_hook(self._closer, always_call=True))
            if isinstance(module, transformer.MultiheadAttention):
                # The package's models call `attend` (the cached path), not forward: a range on the instance only.
                module.attend = self._ranged(name, module.attend)
                self._patched.append(module)
        return self

    def _ranged(self, name, method):
        def ranged(*args, **kwargs):
            self._opener(name)(None, args)
            try:
                return method(*args, **kwargs)
            finally:
                self._closer(None, args, None)
        return ranged

    def _opener(self, name):
        def open_range(module, args):
            scope = torch.autograd.profiler.record_function(name)
            scope.__enter__()
            if self.nvtx:
                torch.cuda.nvtx.range_push(name)
            self._open.append(scope)
        return open_range

    def _closer(self, module, args, output):
        if self._open:  # always_call: also after a forward that raised
            if self.nvtx:
                torch.cuda.nvtx.range_pop()
            self._open.pop().__exit__(None, None, None)

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._patched:
            del module.attend  # the class's method again
        self._patched.clear()
        while self._open:
            self._closer(None, None, None)
        return False


@dataclass
class Attribution:
    """Profiled time (seconds, summed over the profiled steps) per block, and per op or kernel."""

    block_seconds: dict[str, float]
    total_seconds: float
    top: list[dict] = field(default_factory=list)  # {name, seconds, calls, block, ours}, by time, descending
    ours_seconds: float = 0.0


class _Walker:
    """Memoised walks up an event's ``cpu_parent`` chain: its block and whether it runs inside one of our ops."""

    def __init__(self, events, range_blocks):
        self.range_blocks = range_blocks
        self._block: dict[int, str] = {}
        self._ours: dict[int, tuple[bool, str | None]] = {}
        # Forward ops by (thread, sequence number); of the ops sharing a number the last one started created the
        # autograd node (the earlier ones are composites that peeked at the same counter).
        self._forward: dict[tuple[int, int], object] = {}
        for event in sorted(events, key=lambda e: e.time_range.start):
            if event.sequence_nr >= 0 and not self._is_backward(event):
                self._forward[(event.thread, event.sequence_nr)] = event

    @staticmethod
    def _is_backward(event) -> bool:
        return bool(event.fwd_thread) or event.name.startswith(_EVALUATE_PREFIX)

    def _own_block(self, event) -> str | None:
        if event.name in self.range_blocks:
            block = self.range_blocks[event.name]
            return None if block == LAYER else block
        block = op_block(event.name)
        if block is None and event.sequence_nr >= 0 and self._is_backward(event):
            forward = self._forward.get((event.fwd_thread or event.thread, event.sequence_nr))
            if forward is not None:
                block = self.block(forward)
        return block

    def block(self, event) -> str:
        chain, node, result = [], event, "other"
        while node is not None:
            if id(node) in self._block:
                result = self._block[id(node)]
                break
            own = self._own_block(node)
            if own is not None:
                self._block[id(node)] = result = own
                break
            chain.append(node)
            node = node.cpu_parent
        for link in chain:
            self._block[id(link)] = result
        return result

    def ours(self, event) -> tuple[bool, str | None]:
        """(inside one of our ops, the innermost ``kernels::`` op around it or None)."""
        key = id(event)
        if key not in self._ours:
            parent = (False, None) if event.cpu_parent is None else self.ours(event.cpu_parent)
            own = is_ours(event.name)
            named = event.name if event.name.startswith("kernels::") else parent[1]
            self._ours[key] = (own or parent[0], named)
        return self._ours[key]


def attribute(events, range_blocks: dict[str, str], *, device: str, top: int = 12) -> Attribution:
    """Attributes the events of ``torch.profiler`` (``prof.events()``) to blocks: CPU op self time when ``device`` is
    ``"cpu"``, CUDA kernel time when it is ``"cuda"``. ``range_blocks``: range name -> block (:class:`ModuleRanges`'
    ``blocks`` plus the step's own phases)."""
    cpu_events = [e for e in events if e.device_type == DeviceType.CPU and not e.is_async]
    walker = _Walker(cpu_events, range_blocks)
    block_us = dict.fromkeys(BLOCKS, 0.0)
    by_name: dict[tuple[str, bool], dict] = {}

    def add(name, us, block, ours, call=True):
        block_us[block] += us
        row = by_name.setdefault((name, ours), {"name": name, "seconds": 0.0, "calls": 0, "ours": ours,
                                                "_blocks": dict.fromkeys(BLOCKS, 0.0)})
        row["seconds"] += us / 1e6
        row["calls"] += int(call)
        row["_blocks"][block] += us

    if device == "cuda":
        device_events = [e for e in events if e.device_type == DeviceType.CUDA]
        total_us = sum(e.time_range.elapsed_us() for e in device_events)
        linked_us = 0.0
        for event in cpu_events:
            if not event.kernels:
                continue
            block, (ours, _) = walker.block(event), walker.ours(event)
            for kernel in event.kernels:
                add(kernel.name, kernel.duration, block, ours)
                linked_us += kernel.duration
        if total_us > linked_us:  # kernels no op claimed (e.g. launched by a library thread)
            block_us["other"] += total_us - linked_us
        total_us = max(total_us, linked_us)
    else:
        total_us = 0.0
        for event in cpu_events:
            us = event.self_cpu_time_total
            total_us += us
            ours, inner = walker.ours(event)
            if event.name in range_blocks:  # a range's self time: Python around the ops; counted, not listed
                block_us[walker.block(event)] += us
                continue
            # An op inside one of ours (aten::addmm in kernels::linear_forward) is listed as that op's time.
            add(inner or event.name, us, walker.block(event), ours, call=inner in (None, event.name))

    rows = sorted(by_name.values(), key=lambda r: r["seconds"], reverse=True)
    ours_us = sum(r["seconds"] for r in rows if r["ours"]) * 1e6
    listed = []
    for row in rows[:top]:
        blocks = row.pop("_blocks")
        row["block"] = max(blocks, key=blocks.get)
        row["share"] = row["seconds"] * 1e6 / total_us if total_us else 0.0
        listed.append(row)
    return Attribution(block_seconds={b: us / 1e6 for b, us in block_us.items()}, total_seconds=total_us / 1e6,
                       top=listed, ours_seconds=ours_us / 1e6)
