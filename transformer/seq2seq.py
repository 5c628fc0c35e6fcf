"""The encoder-decoder of "Attention Is All You Need": token embeddings scaled by sqrt(d_model), sinusoidal
positions, post-norm layers, optionally shared embeddings, and cached generation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .generation import next_token, set_backend
from .layers import Transformer


@dataclass
class Seq2SeqConfig:
    src_vocab_size: int = 64
    tgt_vocab_size: int = 64
    max_seq_len: int = 256
    d_model: int = 128
    n_heads: int = 4
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    d_ff: int | None = None  # 4 * d_model when None
    dropout: float = 0.1
    activation: str = "relu"
    layer_norm_eps: float = 1e-5
    share_embeddings: bool = False  # one table for source, target and the output projection (same vocabulary)
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2


def sinusoidal_positions(length, d_model):
    """``PE[pos, 2i] = sin(pos / 10000^(2i/d))``, ``PE[pos, 2i+1] = cos(...)``: ``(length, d_model)``."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: d_model // 2])
    return table


# Generation reads "has every row ended?" on the host every this many steps only (each read waits for the device);
# the steps run past the end are dropped afterwards, so the output is the same as with a check per step.
_STOP_CHECK_EVERY = 8


class Seq2Seq(nn.Module):
    """``forward(src, tgt, src_key_padding_mask=None, tgt_key_padding_mask=None) -> logits`` ``(B, T, tgt_vocab)``.

    ``src``/``tgt`` are ``(B, S)``/``(B, T)`` token ids; ``tgt`` starts with BOS (teacher forcing). Padding masks
    (True = padding) default to ``tokens == pad_token_id``.
    """

    def __init__(self, config: Seq2SeqConfig, backend: str = "auto"):
        super().__init__()
        if config.share_embeddings and config.src_vocab_size != config.tgt_vocab_size:
            raise ValueError("argument `config.share_embeddings` needs src_vocab_size == tgt_vocab_size")
        self.config = config
        d = config.d_model
        self.src_embed = nn.Embedding(config.src_vocab_size, d, padding_idx=config.pad_token_id)
        self.tgt_embed = (self.src_embed if config.share_embeddings
                          else nn.Embedding(config.tgt_vocab_size, d, padding_idx=config.pad_token_id))
        self.register_buffer("positions", sinusoidal_positions(config.max_seq_len, d), persistent=False)
        self.dropout = nn.Dropout(config.dropout)
        self.transformer = Transformer(d, config.n_heads, config.n_encoder_layers, config.n_decoder_layers,
                                       config.d_ff or 4 * d, config.dropout, config.activation,
                                       layer_norm_eps=config.layer_norm_eps, batch_first=True)
        self.generator = nn.Linear(d, config.tgt_vocab_size, bias=False)
        for embedding in {self.src_embed, self.tgt_embed}:
            nn.init.normal_(embedding.weight, std=d ** -0.5)
        if config.share_embeddings:
            self.generator.weight = self.tgt_embed.weight
        set_backend(self, backend)

    def _embed(self, tokens, table, offset=0):
        if offset + tokens.shape[1] > self.config.max_seq_len:
            raise ValueError(f"{offset + tokens.shape[1]} positions exceed max_seq_len {self.config.max_seq_len}")
        x = table(tokens) * math.sqrt(self.config.d_model) + self.positions[offset:offset + tokens.shape[1]]
        return self.dropout(x.to(table.weight.dtype))

    def _padding(self, tokens, mask):
        return tokens == self.config.pad_token_id if mask is None else mask

    def encode(self, src, src_key_padding_mask=None):
        """The memory ``(B, S, d_model)``."""
        return self.transformer.encoder(self._embed(src, self.src_embed),
                                        src_key_padding_mask=self._padding(src, src_key_padding_mask))

    def forward(self, src, tgt, src_key_padding_mask=None, tgt_key_padding_mask=None):
        src_padding = self._padding(src, src_key_padding_mask)
        memory = self.encode(src, src_padding)
        t = tgt.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt.device).triu(1)  # True = ignore, as torch.nn
        out = self.transformer.decoder(self._embed(tgt, self.tgt_embed), memory, tgt_mask=causal,
                                       tgt_key_padding_mask=tgt_key_padding_mask,
                                       memory_key_padding_mask=src_padding, tgt_is_causal=True)
        return self.generator(out)

    def loss(self, src, tgt):
        """Teacher-forced cross-entropy of ``tgt[:, 1:]`` given ``tgt[:, :-1]`` (padding not scored)."""
        logits = self(src, tgt[:, :-1])
        labels = tgt[:, 1:].masked_fill(tgt[:, 1:] == self.config.pad_token_id, -100)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)

    @torch.no_grad()
    def generate(self, src, max_new_tokens, *, src_key_padding_mask=None, do_sample=False, temperature=1.0,
                 top_k=None, use_cache=True, generator=None):
        """Target tokens ``(B, 1 + n)`` starting with BOS: greedy or sampled, stopping once every row has produced
        EOS (rows that ended are padded; the check waits for the device every few steps only). With ``use_cache``
        each step decodes the new token only over the self-attention cache and the cross-attention keys/values
        projected once from the memory."""
        was_training = self.training
        self.eval()
        src_padding = self._padding(src, src_key_padding_mask)
        memory = self.encode(src, src_padding)
        config = self.config
        tokens = torch.full((src.shape[0], 1), config.bos_token_id, dtype=torch.long, device=src.device)
        done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
        cache = self.transformer.decoder.new_cache() if use_cache else None
        all_done = []  # per step, on the device: every row had produced EOS by then
        for step in range(max_new_tokens):
            if use_cache:
                x = self._embed(tokens[:, -1:], self.tgt_embed, offset=tokens.shape[1] - 1)
                out = self.transformer.decoder.forward_cached(x, memory, cache, src_padding)
                logits = self.generator(out[:, -1])
            else:
                logits = self(src, tokens, src_key_padding_mask=src_padding)[:, -1]
            token = next_token(logits, do_sample=do_sample, temperature=temperature, top_k=top_k,
                               generator=generator)
            token = token.masked_fill(done[:, None], config.pad_token_id)
            tokens = torch.cat([tokens, token], dim=1)
            done |= token[:, 0] == config.eos_token_id
            all_done.append(done.all())
            if (step + 1) % _STOP_CHECK_EVERY == 0 and bool(all_done[-1]):  # the loop's only host synchronisation
                break
        self.train(was_training)
        finished = torch.stack(all_done).nonzero() if all_done else None
        if finished is not None and finished.numel():  # drop the steps run after every row had ended
            tokens = tokens[:, :int(finished[0, 0]) + 2]
        return tokens
