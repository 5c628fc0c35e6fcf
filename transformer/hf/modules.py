"""Fused forwards for the blocks of Hugging Face models, as mixins put in front of the model's own classes.

``transformer.swap`` changes the class of a module *instance* to ``Fused<Original>``, a subclass made here of one
mixin and the original class (:func:`fused_class`): the module object, its ``Parameter`` objects, buffers, hooks,
children and ``state_dict`` keys all stay; only ``forward`` (or BERT's ``feed_forward_chunk``) is the mixin's.
transformers' classes themselves are never modified, and ``unswap`` sets the instance's class back.

Each mixin reads the weights where the model holds them and passes them to the kernels as they are: the separate
``gate_proj`` / ``up_proj`` of Llama-style MLPs as a ``(gate, up)`` pair, GPT-2's ``Conv1D`` weights ``(in, out)`` as
``.t()`` views. ``swap`` stores the activation and the backend on the instance (:data:`ACTIVATION_ATTRIBUTE`,
:data:`BACKEND_ATTRIBUTE`).
"""

from __future__ import annotations

import sys

import kernels

from .attention import BACKEND_ATTRIBUTE

ACTIVATION_ATTRIBUTE = "_fused_kernels_activation"
ORIGINAL_ATTRIBUTE = "_fused_kernels_original"  # on the made classes: the class to restore


class FusedRMSNorm:
    """``LlamaRMSNorm`` / ``MistralRMSNorm`` / ``Qwen2RMSNorm`` (``weight``, ``variance_epsilon``) ->
    ``kernels.rms_norm``."""

    def forward(self, hidden_states):
        return kernels.rms_norm(hidden_states, (self.weight.shape[-1],), self.weight, self.variance_epsilon,
                                backend=getattr(self, BACKEND_ATTRIBUTE))


class FusedGatedMLP:
    """``LlamaMLP``-style ``down_proj(act(gate_proj(x)) * up_proj(x))`` -> ``kernels.feed_forward`` with the
    ``(gate, up)`` pair (``swiglu`` for SiLU, ``geglu`` for erf GELU)."""

    def forward(self, x):
        gate, up, down = self.gate_proj, self.up_proj, self.down_proj
        bias = None if gate.bias is None else (gate.bias, up.bias)
        return kernels.feed_forward(x, (gate.weight, up.weight), bias, down.weight, down.bias,
                                    activation=getattr(self, ACTIVATION_ATTRIBUTE),
                                    backend=getattr(self, BACKEND_ATTRIBUTE))


class FusedConv1DMLP:
    """GPT-2's MLP, ``dropout(c_proj(act(c_fc(x))))`` with ``Conv1D`` weights ``(in, out)`` -> ``kernels.feed_forward``
    on their transposed views; the dropout after ``c_proj`` stays torch's (the kernel's dropout acts on the
    activation, a different place)."""

    def forward(self, hidden_states):
        c_fc, c_proj = self.c_fc, self.c_proj
        out = kernels.feed_forward(hidden_states, c_fc.weight.t(), c_fc.bias, c_proj.weight.t(), c_proj.bias,
                                   activation=getattr(self, ACTIVATION_ATTRIBUTE),
                                   backend=getattr(self, BACKEND_ATTRIBUTE))
        return self.dropout(out)


def _add_and_norm(norm, hidden_states, residual, backend):
    """``norm(hidden_states + residual)`` as the fused Add & Norm (``kernels.layer_norm`` with ``residual=``)."""
    out, _sum = kernels.layer_norm(hidden_states, norm.normalized_shape, norm.weight, norm.bias, norm.eps,
                                   residual=residual, backend=backend)
    return out


class FusedAddNormOutput:
    """BERT's ``BertSelfOutput`` (RoBERTa's too): ``LayerNorm(dropout(dense(h)) + input)`` -> the dense layer, then
    the fused Add & Norm."""

    def forward(self, hidden_states, input_tensor):
        hidden_states = self.dropout(self.dense(hidden_states))
        return _add_and_norm(self.LayerNorm, hidden_states, input_tensor, getattr(self, BACKEND_ATTRIBUTE))


class FusedFeedForwardLayer:
    """BERT's ``BertLayer`` (RoBERTa's too): its feed-forward chunk, ``output.LayerNorm(dropout(output.dense(
    act(intermediate.dense(x)))) + x)``, becomes ``kernels.feed_forward`` then the fused Add & Norm. The layer's
    ``forward`` (attention, cross-attention, chunking) stays transformers' own."""

    def feed_forward_chunk(self, attention_output):
        dense_in, output = self.intermediate.dense, self.output
        backend = getattr(self, BACKEND_ATTRIBUTE)
        hidden = kernels.feed_forward(attention_output, dense_in.weight, dense_in.bias, output.dense.weight,
                                      output.dense.bias, activation=getattr(self, ACTIVATION_ATTRIBUTE),
                                      backend=backend)
        return _add_and_norm(output.LayerNorm, output.dropout(hidden), attention_output, backend)


_MADE: dict = {}


def fused_class(original: type, mixin: type) -> type:
    """``Fused<Original>(mixin, original)``, made once per pair and kept as an attribute of this module under a
    unique name, so a pickled module finds its class again."""
    key = (original, mixin)
    if key not in _MADE:
        name = f"Fused{original.__name__}"
        if any(made.__qualname__ == name for made in _MADE.values()):  # two originals of one name
            name = f"{name}_{len(_MADE)}"
        cls = type(name, (mixin, original), {"__module__": __name__, ORIGINAL_ATTRIBUTE: original})
        setattr(sys.modules[__name__], name, cls)
        _MADE[key] = cls
    return _MADE[key]
