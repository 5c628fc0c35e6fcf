"""``transformer.swap``: put the fused modules into any ``torch.nn`` model, in place, and ``transformer.unswap`` back.

A swapped module is built (on the meta device, so nothing is allocated) from the original's constructor arguments,
then adopts the original's ``Parameter`` objects, buffers, children, hooks and train/eval mode. No tensor is copied:
the parameters an optimizer holds stay the model's parameters, so its state stays valid, and the ``state_dict``
keys are unchanged. The same rule runs backwards in ``unswap``.

Hugging Face ``transformers`` models (a ``PreTrainedModel`` anywhere in the tree) go to :mod:`transformer.hf`: the
blocks of known families take fused classes (by instance; same module objects) and the model's attention
implementation becomes ``"fused_kernels"``; a model of another family is left as it is, and the report says why.

Which torch.nn modules: exactly ``nn.LayerNorm``, ``nn.RMSNorm``, ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``,
``nn.TransformerDecoderLayer`` and the stacks ``nn.TransformerEncoder`` / ``nn.TransformerDecoder`` (so an
``nn.Transformer`` runs fused throughout; its own forward only calls the two stacks). Subclasses of those are left
alone (their own ``forward`` may differ), but their children are visited. The root module is swapped in place too
(it takes the fused class), so the caller's reference stays the model.
"""

from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

import kernels

from .layer_norm import LayerNorm, RMSNorm
from .layers import TransformerDecoder, TransformerDecoderLayer, TransformerEncoder, TransformerEncoderLayer
from .multihead_attention import MultiheadAttention

__all__ = ["SwapReport", "swap", "unswap"]

_BACKENDS = ("auto",) + tuple(kernels.BACKENDS)


# -- constructor arguments read from a module (the fused classes keep torch's attributes, so these serve both ways) --

def _norm_args(module):
    return (module.normalized_shape,), {"eps": module.eps, "elementwise_affine": module.elementwise_affine,
                                        "bias": getattr(module, "bias", None) is not None}


def _rms_norm_args(module):
    return (module.normalized_shape,), {"eps": module.eps, "elementwise_affine": module.elementwise_affine}


def _attention_args(module):
    return (module.embed_dim, module.num_heads), {
        "dropout": module.dropout, "bias": module.in_proj_bias is not None, "add_bias_kv": module.bias_k is not None,
        "add_zero_attn": module.add_zero_attn, "kdim": module.kdim, "vdim": module.vdim,
        "batch_first": module.batch_first}


def _layer_args(module):
    return (module.linear1.in_features, module.self_attn.num_heads), {
        "dim_feedforward": module.linear1.out_features, "dropout": module.dropout.p,
        "activation": module.activation, "layer_norm_eps": module.norm1.eps,
        "batch_first": module.self_attn.batch_first, "norm_first": module.norm_first,
        "bias": module.linear1.bias is not None}


# torch class -> (fused class, constructor arguments); unswap uses the same table backwards. The stacks have no
# arguments: they only hold their layers, so they change class (torch's TransformerEncoder would turn padded inputs
# into nested tensors in eval mode, which the fused layers do not take; ours keeps bool padding masks bool).
_TABLE = {
    nn.LayerNorm: (LayerNorm, _norm_args),
    nn.RMSNorm: (RMSNorm, _rms_norm_args),
    nn.MultiheadAttention: (MultiheadAttention, _attention_args),
    nn.TransformerEncoderLayer: (TransformerEncoderLayer, _layer_args),
    nn.TransformerDecoderLayer: (TransformerDecoderLayer, _layer_args),
    nn.TransformerEncoder: (TransformerEncoder, None),
    nn.TransformerDecoder: (TransformerDecoder, None),
}
_REVERSE = {fused: (original, args) for original, (fused, args) in _TABLE.items()}
_NOTES = {"add_bias_kv": "add_bias_kv: runs torch's own attention forward",
          "add_zero_attn": "add_zero_attn: runs torch's own attention forward"}


@dataclass
class SwapReport:
    """What ``swap``/``unswap`` did: ``swapped`` rows ``(name, from, to, note)`` and ``left`` rows ``(name, class,
    reason)``. Printable."""

    backend: str
    swapped: list[tuple[str, str, str, str]] = field(default_factory=list)
    left: list[tuple[str, str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"swapped {len(self.swapped)} module(s) (backend={self.backend!r}), left {len(self.left)}"]
        width = max([len(row[0]) for row in self.swapped + self.left] + [6])
        for name, before, after, note in self.swapped:
            lines.append(f"  {name or '(root)':<{width}}  {before} -> {after}" + (f"  [{note}]" if note else ""))
        for name, cls, reason in self.left:
            lines.append(f"  {name or '(root)':<{width}}  {cls} left: {reason}")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle):  # IPython / notebooks show the table
        printer.text(str(self))


def swap(model: nn.Module, backend: str = "auto", include=None, exclude=None) -> SwapReport:
    """Replaces, in place, the torch.nn transformer modules of ``model`` with the fused ones, and puts the blocks and
    attention of any Hugging Face model in it on the fused kernels; returns a report.

    ``backend``: what the swapped modules pass to the kernels (``"auto"``, ``"torch"``, ``"triton"``, ``"native"``).
    ``include`` / ``exclude``: iterables of classes (``nn.LayerNorm``, ...) or strings matched (``fnmatch``) against a
    module's qualified name or class name (``"encoder.layers.0.*"``, ``"MultiheadAttention"``); ``exclude`` wins.
    Works before or after ``.to(device, dtype)``, on a model wrapped by ``torch.compile`` (recompiles on the next
    call) and on the root module itself.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"argument `backend` must be one of {', '.join(map(repr, _BACKENDS))}; got {backend!r}")
    report = SwapReport(backend=backend)
    hf_done = set()  # ids of the transformers models already swapped (an outer model swaps its inner ones)

    def visit(module, name):
        cls = type(module)
        if _is_hf_model(module) and id(module) not in hf_done:
            from . import hf

            known = hf.swap_model(module, name, backend, lambda m, n: _filtered(m, n, include, exclude), report)
            hf_done.update(id(m) for m in module.modules() if _is_hf_model(m))
            if not known:
                return module
        if cls in _TABLE:
            reason = _filtered(module, name, include, exclude)
            if reason is None:
                fused_cls, args = _TABLE[cls]
                new = _rebuild(module, fused_cls, args, lambda child, n: visit(child, _join(name, n)))
                _set_backend(new, backend)
                report.swapped.append((name, _cls_name(cls), _cls_name(fused_cls), _note(module)))
                return new
            report.left.append((name, _cls_name(cls), reason))
        elif cls in _REVERSE:
            report.left.append((name, _cls_name(cls), "already fused"))
        elif isinstance(module, tuple(_TABLE)):
            report.left.append((name, _cls_name(cls), f"subclass of {_cls_name(_base_in_table(module))} with its "
                                                      "own code: kept (its children are visited)"))
        _visit_children(module, lambda child, n: visit(child, _join(name, n)))
        return module

    _replace_root(model, visit(model, ""))
    return report


def unswap(model: nn.Module) -> SwapReport:
    """Puts the torch.nn classes back in place of the fused modules (same ``Parameter`` objects); returns a report."""
    report = SwapReport(backend="torch.nn")

    def visit(module, name):
        cls = type(module)
        if _is_hf_model(module):
            from . import hf

            hf.unswap_model(module, name, report)
        if cls in _REVERSE:
            original_cls, args = _REVERSE[cls]
            new = _rebuild(module, original_cls, args, lambda child, n: visit(child, _join(name, n)))
            report.swapped.append((name, _cls_name(cls), _cls_name(original_cls), ""))
            return new
        _visit_children(module, lambda child, n: visit(child, _join(name, n)))
        return module

    _replace_root(model, visit(model, ""))
    return report


# -- machinery ---------------------------------------------------------------------------------------------------------

def _is_hf_model(module) -> bool:
    """A transformers ``PreTrainedModel`` (transformers cannot have made one unless it is imported)."""
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(module, transformers.PreTrainedModel)


def _replace_root(model, new):
    """The root in place: ``model`` becomes the rebuilt module (its class and state), so references stay valid."""
    if new is not model:
        model.__class__ = new.__class__
        model.__dict__ = new.__dict__


def _rebuild(old, cls, args, convert_child):
    """A ``cls`` built from ``old``'s constructor arguments on the meta device that adopts ``old``'s parameters,
    buffers, children (each passed through ``convert_child``), hooks and mode. Without ``args`` (the stacks) the new
    module takes ``old``'s attributes as they are."""
    if args is None:
        new = cls.__new__(cls)
        new.__dict__.update(old.__dict__)
        new._modules = dict(old._modules)
        _visit_children(new, convert_child)
        return new
    positional, keywords = args(old)
    new = cls(*positional, **keywords, device="meta")
    if set(new._parameters) != set(old._parameters):
        raise RuntimeError(f"cannot swap {_cls_name(type(old))}: parameters {sorted(old._parameters)} differ from "
                           f"{_cls_name(cls)}'s {sorted(new._parameters)}")
    missing = set(new._modules) - set(old._modules)
    if missing:
        raise RuntimeError(f"cannot swap {_cls_name(type(old))}: it lacks the children {sorted(missing)}")
    new._parameters.update(old._parameters)  # the same Parameter objects (None entries stay None)
    new._buffers.update(old._buffers)
    new._non_persistent_buffers_set = set(old._non_persistent_buffers_set)
    for child_name, child in old._modules.items():
        new._modules[child_name] = None if child is None else convert_child(child, child_name)
    for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                  "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called",
                  "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
                  "_load_state_dict_post_hooks"):
        if hasattr(old, hooks):
            setattr(new, hooks, getattr(old, hooks))
    new.train(old.training)
    return new


def _visit_children(module, convert_child):
    for name, child in list(module._modules.items()):
        if child is not None:
            new = convert_child(child, name)
            if new is not child:
                module._modules[name] = new


def _set_backend(module, backend):
    for sub in module.modules():
        if type(sub) in _REVERSE:
            sub.backend = backend


def _filtered(module, name, include, exclude):
    """None when ``module`` is to be swapped, else the reason it is not."""
    if exclude is not None and _matches(module, name, exclude):
        return "excluded"
    if include is not None and not _matches(module, name, include):
        return "not included"
    return None


def _matches(module, name, patterns):
    for pattern in patterns:
        if isinstance(pattern, type):
            if isinstance(module, pattern):
                return True
        elif fnmatch.fnmatchcase(name, pattern) or pattern in (type(module).__name__, _cls_name(type(module))):
            return True
    return False


def _note(module):
    notes = [text for attr, text in _NOTES.items() if getattr(module, attr, None) not in (None, False)]
    return "; ".join(notes)


def _base_in_table(module):
    return next(cls for cls in _TABLE if isinstance(module, cls))


def _cls_name(cls):
    prefix = "nn" if cls.__module__.startswith("torch.nn") else "transformer"
    return f"{prefix}.{cls.__name__}"


def _join(prefix, name):
    return f"{prefix}.{name}" if prefix else name
