"""A BERT-style encoder: learned positions, token types, padding masks, post-norm layers and a masked-LM head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import kernels

from .generation import set_backend
from .gpt import _init_weights
from .layer_norm import LayerNorm
from .layers import TransformerEncoder, TransformerEncoderLayer


@dataclass
class BERTConfig:
    vocab_size: int = 1024
    max_seq_len: int = 128
    type_vocab_size: int = 2
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int | None = None  # 4 * d_model when None
    dropout: float = 0.1
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0


class BERT(nn.Module):
    """``forward(input_ids, token_type_ids=None, attention_mask=None, labels=None) -> (logits, loss)``.

    ``attention_mask`` ``(B, S)``: 1 for tokens, 0 for padding (the Hugging Face convention); ``labels``: the token to
    predict, -100 where no prediction is scored. The masked-LM decoder is tied to the word embeddings.
    """

    def __init__(self, config: BERTConfig, backend: str = "auto"):
        super().__init__()
        self.config = config
        d = config.d_model
        self.word_embeddings = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_seq_len, d)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, d)
        self.embedding_norm = LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        layer = TransformerEncoderLayer(d, config.n_heads, config.d_ff or 4 * d, config.dropout, config.activation,
                                        config.layer_norm_eps, batch_first=True)
        self.encoder = TransformerEncoder(layer, config.n_layers)
        self.mlm_dense = nn.Linear(d, d)
        self.mlm_norm = LayerNorm(d, eps=config.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.apply(_init_weights)
        self.backend = backend  # for the head's kernels.linear calls
        set_backend(self, backend)

    def encode(self, input_ids, token_type_ids=None, attention_mask=None):
        """The hidden states ``(B, S, d_model)``."""
        if input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"argument `input_ids` has {input_ids.shape[1]} positions; max_seq_len is "
                             f"{self.config.max_seq_len}")
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        if token_type_ids is not None:
            x = x + self.token_type_embeddings(token_type_ids)
        else:
            x = x + self.token_type_embeddings.weight[0]
        x = self.dropout(self.embedding_norm(x))
        padding = None if attention_mask is None else attention_mask == 0  # (B, S), True = padding
        return self.encoder(x, src_key_padding_mask=padding)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None):
        h = self.encode(input_ids, token_type_ids, attention_mask)
        h = kernels.linear(h, self.mlm_dense.weight, self.mlm_dense.bias, activation="gelu", backend=self.backend)
        logits = kernels.linear(self.mlm_norm(h), self.word_embeddings.weight, self.mlm_bias, backend=self.backend)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return logits, loss
