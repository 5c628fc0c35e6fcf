"""Swapping one Hugging Face model in place (called by ``transformer.swap`` / ``unswap`` for every
``PreTrainedModel`` they meet).

* Blocks (:mod:`transformer.hf.families`): each recognised module *instance* takes the class
  ``Fused<Original>`` (:func:`transformer.hf.modules.fused_class`); ``unswap`` gives it back its own class.
* Attention: ``model.set_attn_implementation("fused_kernels")``; the implementation it had is kept on the model and
  restored by ``unswap``. It is one setting per model, so it is switched only when no attention module of the model
  is filtered out by ``include`` / ``exclude``.
* A model of another family is left as it is; the report names it and its modules that look like blocks, and why.
"""

from __future__ import annotations

from torch import nn

from .attention import BACKEND_ATTRIBUTE, NAME, register
from .families import FAMILIES, activation_for
from .modules import ACTIVATION_ATTRIBUTE, ORIGINAL_ATTRIBUTE, fused_class

PREVIOUS_ATTENTION = "_fused_kernels_previous_attn_implementation"  # on the model, for unswap
_BLOCK_LIKE = ("Attention", "MLP", "Norm", "FeedForward", "Intermediate", "Output", "Layer", "Block")


def _join(prefix, name):
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _hf_name(cls) -> str:
    return f"transformers.{cls.__name__}"


def swap_model(model, name: str, backend: str, filtered, report) -> bool:
    """Swaps the blocks and the attention of the transformers ``model`` (qualified ``name``) in place, adding rows to
    ``report``; ``filtered(module, name)`` gives the reason a module is filtered out, or None. Returns whether the
    family is known (then ``transformer.swap`` goes on with its torch.nn table inside the model)."""
    register()
    model_type = getattr(model.config, "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None:
        reason = (f"transformers model of type {model_type!r}: no adapter (families: {', '.join(FAMILIES)}); "
                  "left as it is")
        report.left.append((name, _hf_name(type(model)), reason))
        for sub_name, sub in model.named_modules():
            if sub_name and (isinstance(sub, nn.LayerNorm) or type(sub).__name__.endswith(_BLOCK_LIKE)):
                report.left.append((_join(name, sub_name), type(sub).__name__,
                                    f"in a {model_type!r} model (no adapter)"))
        return False

    for sub_name, sub in model.named_modules():
        block = family.blocks.get(type(sub).__name__)
        if block is None:
            continue
        full_name = _join(name, sub_name)
        activation, unsupported = activation_for(block, model.config)
        reason = filtered(sub, full_name) or unsupported
        if reason is not None:
            report.left.append((full_name, _hf_name(type(sub)), reason))
            continue
        original = type(sub)
        setattr(sub, BACKEND_ATTRIBUTE, backend)
        if activation is not None:
            setattr(sub, ACTIVATION_ATTRIBUTE, activation)
        sub.__class__ = fused_class(original, block.mixin)
        note = "; ".join(part for part in (f"activation {activation}" if activation else "", block.note) if part)
        report.swapped.append((full_name, _hf_name(original), f"transformer.hf.{sub.__class__.__name__}", note))
    _swap_attention(model, name, family, backend, filtered, report)
    return True


def _swap_attention(model, name, family, backend, filtered, report):
    attention = [(_join(name, n), m) for n, m in model.named_modules() if type(m).__name__ in family.attention]
    if not attention:
        return
    reasons = [filtered(module, full_name) for full_name, module in attention]
    previous = model.config._attn_implementation
    if any(reasons):
        for (full_name, module), reason in zip(attention, reasons):
            report.left.append((full_name, _hf_name(type(module)), reason or "attention is one setting per model and "
                                "another attention module of it is filtered out"))
        return
    if previous != NAME:
        model.set_attn_implementation(NAME)
        if model.config._attn_implementation != NAME:  # transformers refused (it logged why)
            for full_name, module in attention:
                report.left.append((full_name, _hf_name(type(module)), f"{type(model).__name__} cannot set its "
                                    "attention implementation (no AttentionInterface support)"))
            return
        setattr(model, PREVIOUS_ATTENTION, previous)
    for full_name, module in attention:
        setattr(module, BACKEND_ATTRIBUTE, backend)
        report.swapped.append((full_name, _hf_name(type(module)), f"attention {NAME!r}", f"was {previous!r}"))


def unswap_model(model, name: str, report) -> None:
    """Gives every fused block of ``model`` its own class back and restores the attention implementation."""
    for sub_name, sub in model.named_modules():
        original = getattr(type(sub), ORIGINAL_ATTRIBUTE, None)
        if original is not None:
            report.swapped.append((_join(name, sub_name), f"transformer.hf.{type(sub).__name__}", _hf_name(original),
                                   ""))
            sub.__class__ = original
        for attribute in (BACKEND_ATTRIBUTE, ACTIVATION_ATTRIBUTE):
            if attribute in sub.__dict__:
                delattr(sub, attribute)
    previous = model.__dict__.pop(PREVIOUS_ATTENTION, None)
    if previous is not None:
        model.set_attn_implementation(previous)
        report.swapped.append((name, f"attention {NAME!r}", f"attention {previous!r}", ""))
