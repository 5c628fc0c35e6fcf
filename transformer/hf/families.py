"""The model families ``transformer.swap`` knows, as one table: the modules of each family it swaps (by class name,
within the family's own classes), the fused mixin for each, how to read the activation, and the attention modules.

BERT and RoBERTa share their blocks; Llama, Mistral and Qwen2 share theirs (RMSNorm, gated MLP); GPT-2 has its
Conv1D MLP (its ``nn.LayerNorm``s are swapped by ``transformer.swap``'s torch.nn table).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .modules import FusedAddNormOutput, FusedConv1DMLP, FusedFeedForwardLayer, FusedGatedMLP, FusedRMSNorm

# transformers' activation names (config.hidden_act / activation_function) -> the kernels' names.
ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh"}
GATED = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu"}


@dataclass(frozen=True)
class Block:
    """One kind of module of a family: its fused mixin and the config attribute naming its activation (None: the
    block has none). ``gated``: the activation becomes swiglu / geglu."""

    mixin: type
    activation_from: str | None = None
    gated: bool = False
    note: str = ""  # what the swap fuses, for the report


@dataclass(frozen=True)
class Family:
    blocks: dict = field(default_factory=dict)  # class name -> Block
    attention: tuple[str, ...] = ()  # class names of the modules that call the attention interface


def _decoder(prefix: str) -> Family:
    return Family({f"{prefix}RMSNorm": Block(FusedRMSNorm),
                   f"{prefix}MLP": Block(FusedGatedMLP, "hidden_act", gated=True, note="gate/up kept apart")},
                  (f"{prefix}Attention",))


def _encoder(prefix: str) -> Family:
    return Family({f"{prefix}SelfOutput": Block(FusedAddNormOutput, note="dense, then the fused Add & Norm"),
                   f"{prefix}Layer": Block(FusedFeedForwardLayer, "hidden_act",
                                           note="feed-forward chunk: fused feed-forward + Add & Norm")},
                  (f"{prefix}SelfAttention", f"{prefix}CrossAttention"))


# config.model_type -> its family.
FAMILIES = {
    "bert": _encoder("Bert"),
    "roberta": _encoder("Roberta"),
    "gpt2": Family({"GPT2MLP": Block(FusedConv1DMLP, "activation_function",
                                                 note="Conv1D weights as .t() views")}, ("GPT2Attention",)),
    "llama": _decoder("Llama"),
    "mistral": _decoder("Mistral"),
    "qwen2": _decoder("Qwen2"),
}


def activation_for(block: Block, config) -> tuple[str | None, str | None]:
    """(the kernels' activation name, None) for ``block`` under ``config``, or (None, the reason it has none)."""
    if block.activation_from is None:
        return None, None
    name = getattr(config, block.activation_from, None)
    table = GATED if block.gated else ACTIVATIONS
    if not isinstance(name, str) or name not in table:
        return None, (f"activation {block.activation_from}={name!r} has no fused kernel (supported: "
                      f"{', '.join(sorted(table))})")
    return table[name], None
