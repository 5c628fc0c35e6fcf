"""PyTorch transformer modules on the fused kernels, the classic model family, and ``swap`` for any torch.nn model.

* Drop-in modules (torch.nn's constructor and forward arguments, parameters and ``state_dict``):
  ``MultiheadAttention``, ``TransformerEncoderLayer``, ``TransformerDecoderLayer``, ``TransformerEncoder``,
  ``TransformerDecoder``, ``Transformer``, ``LayerNorm``, ``RMSNorm``, and ``FeedForward``.
* Models: ``GPT`` / ``GPTConfig`` (decoder-only), ``BERT`` / ``BERTConfig`` (encoder with a masked-LM head),
  ``Seq2Seq`` / ``Seq2SeqConfig`` (the encoder-decoder of "Attention Is All You Need"), with cached generation.
* ``swap(model, backend="auto", include=None, exclude=None)`` / ``unswap(model)``: torch.nn models, and Hugging Face
  ``transformers`` models (BERT, RoBERTa, GPT-2, Llama, Mistral, Qwen2) through ``transformer.hf``, imported only
  when a model needs it.
"""

from .bert import BERT, BERTConfig
from .feed_forward import FeedForward
from .generation import next_token, set_backend
from .gpt import GPT, GPTConfig
from .layer_norm import LayerNorm, RMSNorm
from .layers import (
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)
from .multihead_attention import MultiheadAttention
from .seq2seq import Seq2Seq, Seq2SeqConfig
from .swap import SwapReport, swap, unswap

__all__ = [
    "BERT",
    "BERTConfig",
    "GPT",
    "GPTConfig",
    "Seq2Seq",
    "Seq2SeqConfig",
    "next_token",
    "set_backend",
    "FeedForward",
    "LayerNorm",
    "MultiheadAttention",
    "RMSNorm",
    "SwapReport",
    "Transformer",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "swap",
    "unswap",
]
