"""Drop-in ``nn.TransformerEncoderLayer`` / ``DecoderLayer`` / ``Encoder`` / ``Decoder`` / ``Transformer`` on the
fused kernels.

Each class takes torch's constructor and forward arguments and creates the same children in the same order (so the
parameter names, the ``state_dict`` and even the random initialisation under a given seed are torch's). The forward
differs in how it computes:

* attention: ``transformer.MultiheadAttention`` (masks stay bool when given bool; no nested tensors);
* "Add & Norm": the residual add is fused into the layer norm (``norm(x, residual=h)`` returns ``(norm(x + h), x + h)``);
* the feed-forward block: ``kernels.feed_forward`` with the activation fused (relu, gelu, tanh-gelu, silu), and the
  residual add fused too unless a training-time ``dropout2`` must act before it. An activation the kernels do not
  know (any other callable) runs as given between two ``kernels.linear`` calls.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import kernels

from .layer_norm import LayerNorm, RMSNorm
from ._scripting import NotScriptable
from .multihead_attention import AttentionCache, MultiheadAttention, check_attention_inputs

__all__ = ["Transformer", "TransformerDecoder", "TransformerDecoderLayer", "TransformerEncoder",
           "TransformerEncoderLayer", "DecoderLayerCache"]


def _get_activation_fn(activation):
    """torch's rule: "relu" / "gelu" by name, else the callable as given."""
    if activation == "relu":
        return F.relu
    if activation == "gelu":
        return F.gelu
    raise RuntimeError(f"activation should be relu/gelu, not {activation}")


def _relu_or_gelu(activation) -> int:
    """torch's ``activation_relu_or_gelu`` flag (1 relu, 2 gelu, 0 other), kept for code that reads it."""
    if activation is F.relu or isinstance(activation, nn.ReLU):
        return 1
    if activation is F.gelu or isinstance(activation, nn.GELU):
        return 2
    return 0


def activation_name(activation) -> str | None:
    """The ``kernels.feed_forward`` name of an activation callable, or None when the kernels do not know it."""
    if activation is F.relu or isinstance(activation, nn.ReLU):
        return "relu"
    if activation is F.gelu:
        return "gelu"
    if isinstance(activation, nn.GELU):
        return "gelu" if activation.approximate == "none" else "gelu_tanh"
    if activation is F.silu or isinstance(activation, nn.SiLU):
        return "silu"
    return None


def add_norm(norm, x, residual):
    """``(norm(x + residual), x + residual)``: fused in one kernel when ``norm`` is one of ours, else in two steps
    (a layer whose norm was left as a plain torch module by ``swap(..., exclude=...)``)."""
    if isinstance(norm, (LayerNorm, RMSNorm)):
        return norm(x, residual=residual)
    h = x + residual
    return norm(h), h


def apply_dropout(module: nn.Dropout, x):
    """``module(x)``, skipped where it is the identity (eval mode or p = 0): one call less per use."""
    return module(x) if module.training and module.p > 0.0 else x


class _LayerBase(NotScriptable, nn.Module):
    """What the encoder and decoder layers share: the feed-forward block on their ``linear1``/``dropout``/
    ``linear2``/``activation`` children, and the dispatch to torch's composition for subclasses that override
    torch's block methods (``_sa_block``, ``_mha_block``, ``_ff_block``), as torch's own tests subclass the layers."""

    backend = "auto"
    _BLOCKS: tuple[str, ...] = ()
    _custom_blocks = False  # a subclass overrides one of _BLOCKS: forward composes them as torch does

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        base = next((b for b in cls.__mro__[1:] if b.__dict__.get("_BLOCKS")), None)
        if base is not None:
            cls._custom_blocks = any(getattr(cls, name) is not getattr(base, name) for name in base._BLOCKS)

    def _activation_name(self):
        """The kernels' name of ``self.activation`` (None: run it as given), looked up again only when the
        attribute was replaced."""
        activation = self.activation
        cached = self.__dict__.get("_activation_cache")
        if cached is None or cached[0] is not activation:
            cached = (activation, activation_name(activation))
            self.__dict__["_activation_cache"] = cached
        return cached[1]

    def _ff_fused(self, x, residual, last_dropout):
        """``residual + last_dropout(linear2(dropout(activation(linear1(x)))))`` (``residual`` may be None)."""
        name = self._activation_name()
        w1, b1, w2, b2 = self.linear1.weight, self.linear1.bias, self.linear2.weight, self.linear2.bias
        late_dropout = self.training and last_dropout.p > 0.0  # acts between linear2 and the residual add
        if name is None:
            h = apply_dropout(self.dropout, self.activation(kernels.linear(x, w1, b1, backend=self.backend)))
            out = apply_dropout(last_dropout, kernels.linear(h, w2, b2, backend=self.backend))
            return out if residual is None else residual + out
        dropout_p = self.dropout.p if self.training else 0.0
        out = kernels.feed_forward(x, w1, b1, w2, b2, activation=name, dropout_p=dropout_p,
                                   residual=None if late_dropout else residual, backend=self.backend)
        if not late_dropout:
            return out
        out = last_dropout(out)
        return out if residual is None else residual + out


class TransformerEncoderLayer(_LayerBase):
    """Drop-in ``nn.TransformerEncoderLayer`` (self-attention and feed-forward, post- or pre-norm)."""

    __constants__ = ["norm_first"]
    _BLOCKS = ("_sa_block", "_ff_block")

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation=F.relu, layer_norm_eps=1e-5,
                 batch_first=False, norm_first=False, bias=True, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first,
                                            **factory_kwargs)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **factory_kwargs)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **factory_kwargs)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory_kwargs)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory_kwargs)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        if isinstance(activation, str):
            activation = _get_activation_fn(activation)
        self.activation_relu_or_gelu = _relu_or_gelu(activation)
        self.activation = activation

    def __setstate__(self, state):
        super().__setstate__(state)
        if not hasattr(self, "activation"):
            self.activation = F.relu

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        check_attention_inputs(self.self_attn, src, src, src, src_key_padding_mask, src_mask, _ENCODER_NAMES)
        x = src
        if self._custom_blocks:  # torch's composition of the (overridden) blocks
            if self.norm_first:
                x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
                return x + self._ff_block(self.norm2(x))
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
            return self.norm2(x + self._ff_block(x))
        if self.norm_first:
            a = self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            n2, h = add_norm(self.norm2, a, x)
            return self._ff_fused(n2, h, self.dropout2)
        x, _ = add_norm(self.norm1, self._sa_block(x, src_mask, src_key_padding_mask, is_causal), x)
        x, _ = add_norm(self.norm2, self._ff_fused(x, None, self.dropout2), x)
        return x

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal=False):
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                           is_causal=is_causal)[0]
        return apply_dropout(self.dropout1, x)

    def _ff_block(self, x):
        """torch's block: ``dropout2(linear2(dropout(activation(linear1(x)))))``, fused."""
        return self._ff_fused(x, None, self.dropout2)


@dataclass
class DecoderLayerCache:
    """The self-attention and cross-attention caches of one decoder layer."""

    self_attn: AttentionCache = field(default_factory=AttentionCache)
    cross_attn: AttentionCache = field(default_factory=AttentionCache)


class TransformerDecoderLayer(_LayerBase):
    """Drop-in ``nn.TransformerDecoderLayer`` (self-attention, cross-attention, feed-forward)."""

    __constants__ = ["norm_first"]
    _BLOCKS = ("_sa_block", "_mha_block", "_ff_block")

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation=F.relu, layer_norm_eps=1e-5,
                 batch_first=False, norm_first=False, bias=True, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=batch_first, bias=bias,
                                            **factory_kwargs)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=batch_first,
                                                 bias=bias, **factory_kwargs)
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias, **factory_kwargs)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias, **factory_kwargs)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory_kwargs)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory_kwargs)
        self.norm3 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory_kwargs)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        if isinstance(activation, str):
            self.activation = _get_activation_fn(activation)
        else:
            self.activation = activation

    def __setstate__(self, state):
        if "activation" not in state:
            state["activation"] = F.relu
        super().__setstate__(state)

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False):
        check_attention_inputs(self.self_attn, tgt, tgt, tgt, tgt_key_padding_mask, tgt_mask, _DECODER_SELF_NAMES)
        check_attention_inputs(self.multihead_attn, tgt, memory, memory, memory_key_padding_mask, memory_mask,
                               _DECODER_CROSS_NAMES)
        x = tgt
        if self._custom_blocks:  # torch's composition of the (overridden) blocks
            if self.norm_first:
                x = x + self._sa_block(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal)
                x = x + self._mha_block(self.norm2(x), memory, memory_mask, memory_key_padding_mask,
                                        memory_is_causal)
                return x + self._ff_block(self.norm3(x))
            x = self.norm1(x + self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal))
            x = self.norm2(x + self._mha_block(x, memory, memory_mask, memory_key_padding_mask, memory_is_causal))
            return self.norm3(x + self._ff_block(x))

        def self_attention(x):
            return self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal)

        def cross_attention(x):
            return self._mha_block(x, memory, memory_mask, memory_key_padding_mask, memory_is_causal)

        return self._layer(x, self_attention, cross_attention)

    def forward_cached(self, tgt, memory, cache: DecoderLayerCache, memory_key_padding_mask=None):
        """One generation step: ``tgt`` holds the new positions only; earlier ones come from ``cache``."""
        def self_attention(x):
            return apply_dropout(self.dropout1, self.self_attn.attend(x, cache.self_attn))

        def cross_attention(x):
            return apply_dropout(self.dropout2, self.multihead_attn.attend(x, cache.cross_attn, memory,
                                                                     memory_key_padding_mask))

        return self._layer(tgt, self_attention, cross_attention)

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal=False):
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal,
                           need_weights=False)[0]
        return apply_dropout(self.dropout1, x)

    def _mha_block(self, x, mem, attn_mask, key_padding_mask, is_causal=False):
        x = self.multihead_attn(x, mem, mem, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                is_causal=is_causal, need_weights=False)[0]
        return apply_dropout(self.dropout2, x)

    def _ff_block(self, x):
        """torch's block: ``dropout3(linear2(dropout(activation(linear1(x)))))``, fused."""
        return self._ff_fused(x, None, self.dropout3)

    def _layer(self, x, self_attention, cross_attention):
        if self.norm_first:
            n2, h = add_norm(self.norm2, self_attention(self.norm1(x)), x)
            n3, h = add_norm(self.norm3, cross_attention(n2), h)
            return self._ff_fused(n3, h, self.dropout3)
        x, _ = add_norm(self.norm1, self_attention(x), x)
        x, _ = add_norm(self.norm2, cross_attention(x), x)
        x, _ = add_norm(self.norm3, self._ff_fused(x, None, self.dropout3), x)
        return x


# Argument names of the layers' checks: (query, key, value, key_padding_mask, attn_mask) as the layer calls them.
_ENCODER_NAMES = ("src", "src", "src", "src_key_padding_mask", "src_mask")
_DECODER_SELF_NAMES = ("tgt", "tgt", "tgt", "tgt_key_padding_mask", "tgt_mask")
_DECODER_CROSS_NAMES = ("tgt", "memory", "memory", "memory_key_padding_mask", "memory_mask")


def _get_clones(module, n):
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


def _get_seq_len(src, batch_first):
    if src.dim() == 2:  # unbatched (S, E)
        return src.size(0)
    return src.size(1 if batch_first else 0)


def _detect_is_causal_mask(mask, is_causal=None, size=None) -> bool:
    """torch's rule: an explicit ``is_causal`` wins; when None, a square mask equal to the causal one (True or -inf
    above the diagonal) counts as causal."""
    if is_causal is not None or mask is None:
        return bool(is_causal)
    size = mask.size(-2) if size is None else size
    causal = torch.triu(torch.full((size, size), float("-inf"), device=mask.device, dtype=mask.dtype), diagonal=1)
    return mask.size() == causal.size() and bool((mask == causal).all())


class TransformerEncoder(NotScriptable, nn.Module):
    """Drop-in ``nn.TransformerEncoder``: ``num_layers`` copies of ``encoder_layer`` and an optional final norm.
    Padding masks are applied by the attention kernels directly (``enable_nested_tensor`` is accepted and unused)."""

    __constants__ = ["norm"]

    def __init__(self, encoder_layer, num_layers, norm=None, enable_nested_tensor=True, mask_check=True):
        super().__init__()
        self.layers = _get_clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm
        self.enable_nested_tensor = enable_nested_tensor
        self.use_nested_tensor = False
        self.mask_check = mask_check

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        batch_first = self.layers[0].self_attn.batch_first
        is_causal = _detect_is_causal_mask(mask, is_causal, _get_seq_len(src, batch_first))
        output = src
        for mod in self.layers:
            output = mod(output, src_mask=mask, is_causal=is_causal, src_key_padding_mask=src_key_padding_mask)
        if self.norm is not None:
            output = self.norm(output)
        return output


class TransformerDecoder(NotScriptable, nn.Module):
    """Drop-in ``nn.TransformerDecoder``: ``num_layers`` copies of ``decoder_layer`` and an optional final norm."""

    __constants__ = ["norm"]

    def __init__(self, decoder_layer, num_layers, norm=None):
        super().__init__()
        self.layers = _get_clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False):
        batch_first = self.layers[0].self_attn.batch_first
        tgt_is_causal = _detect_is_causal_mask(tgt_mask, tgt_is_causal, _get_seq_len(tgt, batch_first))
        output = tgt
        for mod in self.layers:
            output = mod(output, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                         tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                         tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)
        if self.norm is not None:
            output = self.norm(output)
        return output

    def new_cache(self) -> list[DecoderLayerCache]:
        return [DecoderLayerCache() for _ in self.layers]

    def forward_cached(self, tgt, memory, cache, memory_key_padding_mask=None):
        """One generation step over the new positions ``tgt`` (causal over the cached ones; see ``new_cache``)."""
        output = tgt
        for mod, layer_cache in zip(self.layers, cache):
            output = mod.forward_cached(output, memory, layer_cache, memory_key_padding_mask)
        if self.norm is not None:
            output = self.norm(output)
        return output


class Transformer(NotScriptable, nn.Module):
    """Drop-in ``nn.Transformer`` (encoder-decoder) built from the fused layers."""

    def __init__(self, d_model=512, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048,
                 dropout=0.1, activation=F.relu, custom_encoder=None, custom_decoder=None, layer_norm_eps=1e-5,
                 batch_first=False, norm_first=False, bias=True, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if custom_encoder is not None:
            self.encoder = custom_encoder
        else:
            encoder_layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation,
                                                    layer_norm_eps, batch_first, norm_first, bias, **factory_kwargs)
            encoder_norm = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory_kwargs)
            self.encoder = TransformerEncoder(encoder_layer, num_encoder_layers, encoder_norm)
        if custom_decoder is not None:
            self.decoder = custom_decoder
        else:
            decoder_layer = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, activation,
                                                    layer_norm_eps, batch_first, norm_first, bias, **factory_kwargs)
            decoder_norm = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory_kwargs)
            self.decoder = TransformerDecoder(decoder_layer, num_decoder_layers, decoder_norm)
        self._reset_parameters()
        self.d_model = d_model
        self.nhead = nhead
        self.batch_first = batch_first

    def forward(self, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None, src_key_padding_mask=None,
                tgt_key_padding_mask=None, memory_key_padding_mask=None, src_is_causal=None, tgt_is_causal=None,
                memory_is_causal=False):
        is_batched = src.dim() == 3
        if is_batched and src.size(0 if self.batch_first else 1) != tgt.size(0 if self.batch_first else 1):
            raise RuntimeError("the batch number of src and tgt must be equal")
        if src.size(-1) != self.d_model or tgt.size(-1) != self.d_model:
            raise RuntimeError("the feature number of src and tgt must be equal to d_model")
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
        return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask,
                            memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                            memory_is_causal=memory_is_causal)

    @staticmethod
    def generate_square_subsequent_mask(sz, device=None, dtype=None):
        """torch's float causal mask: -inf above the diagonal, 0 elsewhere."""
        return nn.Transformer.generate_square_subsequent_mask(sz, device=device, dtype=dtype)

    def _reset_parameters(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
