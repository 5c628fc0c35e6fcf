"""A GPT-style decoder: causal self-attention, pre-norm blocks, learned positions, tied embeddings, cached generation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .feed_forward import FeedForward
from .generation import CUDAGraphStep, next_token, set_backend
from .layer_norm import LayerNorm, RMSNorm
from .layers import add_norm, apply_dropout
from .multihead_attention import AttentionCache, MultiheadAttention, StaticAttentionCache


@dataclass
class GPTConfig:
    vocab_size: int = 256
    max_seq_len: int = 256
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int | None = None  # 4 * d_model when None
    dropout: float = 0.0
    activation: str = "gelu"
    norm: str = "layer"  # "layer" or "rms"
    norm_eps: float = 1e-5
    bias: bool = True
    tie_embeddings: bool = True


def _norm(config):
    if config.norm == "layer":
        return LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)
    if config.norm == "rms":
        return RMSNorm(config.d_model, eps=config.norm_eps)
    raise ValueError(f"argument `config.norm` must be 'layer' or 'rms'; got {config.norm!r}")


class GPTBlock(nn.Module):
    """``x + attn(ln_1(x))`` then ``h + mlp(ln_2(h))``, with the residual adds fused into ``ln_2`` and the MLP."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = _norm(config)
        self.attn = MultiheadAttention(config.d_model, config.n_heads, dropout=config.dropout, bias=config.bias,
                                       batch_first=True)
        self.ln_2 = _norm(config)
        self.mlp = FeedForward(config.d_model, config.d_ff or 4 * config.d_model, activation=config.activation,
                               dropout=config.dropout, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cache: AttentionCache | None = None):
        a = apply_dropout(self.resid_dropout, self.attn.attend(self.ln_1(x), cache))
        n2, h = add_norm(self.ln_2, a, x)
        if self.training and self.resid_dropout.p > 0.0:
            return h + self.resid_dropout(self.mlp(n2))
        return self.mlp(n2, residual=h)


class GPT(nn.Module):
    """Decoder-only language model; ``forward(idx, targets=None) -> (logits, loss)`` with ``idx`` ``(B, T)``."""

    def __init__(self, config: GPTConfig, backend: str = "auto"):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.max_seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(GPTBlock(config) for _ in range(config.n_layers))
        self.ln_f = _norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(_init_weights)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        set_backend(self, backend)

    def forward(self, idx, targets=None):
        logits = self._logits(idx, None)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss

    def _logits(self, idx, caches):
        t = idx.shape[1]
        if caches is not None and isinstance(caches[0], StaticAttentionCache):
            positions = caches[0].length[:, None] + torch.arange(t, device=idx.device)  # (B, T), on the device
        else:
            offset = 0 if caches is None else caches[0].length
            if offset + t > self.config.max_seq_len:
                raise ValueError(f"argument `idx`: {offset + t} positions exceed max_seq_len "
                                 f"{self.config.max_seq_len}")
            positions = torch.arange(offset, offset + t, device=idx.device)
        x = apply_dropout(self.drop, self.wte(idx) + self.wpe(positions))
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.lm_head(self.ln_f(x))

    def new_static_cache(self, batch: int, max_len: int | None = None) -> list[StaticAttentionCache]:
        """Empty preallocated caches (one per block) for :meth:`decode_step`, on the model's device and dtype."""
        max_len = self.config.max_seq_len if max_len is None else max_len
        if not 0 < max_len <= self.config.max_seq_len:
            raise ValueError(f"argument `max_len` must be in [1, max_seq_len = {self.config.max_seq_len}]; got "
                             f"{max_len}")
        weight = self.wte.weight
        heads = self.config.n_heads
        return [StaticAttentionCache.empty(batch, heads, max_len, self.config.d_model // heads, device=weight.device,
                                           dtype=weight.dtype) for _ in self.blocks]

    def decode_step(self, idx, caches: list[StaticAttentionCache]):
        """The logits ``(B, vocab)`` of the last of the new tokens ``idx`` ``(B, T)``, attending to ``caches``
        (from :meth:`new_static_cache`), which take the new keys and values. Fixed shapes, no host synchronisation:
        a step of ``T`` tokens can be captured in a CUDA graph (``transformer.generation.CUDAGraphStep``). The
        caller keeps the positions within the caches' ``max_len`` (not checked: it would synchronise)."""
        return self._logits(idx, caches)[:, -1]

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, *, do_sample=False, temperature=1.0, top_k=None, use_cache=True,
                 generator=None, static_cache=False, cuda_graph=False):
        """Appends ``max_new_tokens`` tokens to ``idx`` ``(B, T)``: greedy, or sampled (``do_sample``) with
        ``temperature`` and ``top_k``. With ``use_cache`` each step runs the new token only, over the key/value
        cache; without, the whole sequence again (the same tokens). ``static_cache``: preallocated caches
        (:meth:`decode_step`); ``cuda_graph`` (CUDA, implies ``static_cache``): each one-token step replays a CUDA
        graph captured once."""
        was_training = self.training
        self.eval()
        if cuda_graph or static_cache:
            tokens = self._generate_static(idx, max_new_tokens, cuda_graph, do_sample=do_sample,
                                           temperature=temperature, top_k=top_k, generator=generator)
            self.train(was_training)
            return tokens
        caches = [AttentionCache() for _ in self.blocks] if use_cache else None
        tokens, step_input = idx, idx
        for _ in range(max_new_tokens):
            logits = self._logits(step_input, caches)[:, -1]
            token = next_token(logits, do_sample=do_sample, temperature=temperature, top_k=top_k,
                               generator=generator)
            tokens = torch.cat([tokens, token], dim=1)
            step_input = token if use_cache else tokens
        self.train(was_training)
        return tokens

    def _generate_static(self, idx, max_new_tokens, cuda_graph, **sampling):
        if max_new_tokens <= 0:
            return idx
        positions = idx.shape[1] + max_new_tokens - 1  # the last new token is not fed back
        if positions > self.config.max_seq_len:
            raise ValueError(f"argument `idx`: {positions} positions exceed max_seq_len {self.config.max_seq_len}")
        if cuda_graph and idx.device.type != "cuda":
            raise ValueError(f"argument `cuda_graph` needs a model on a CUDA device; `idx` is on {idx.device}")
        caches = self.new_static_cache(idx.shape[0], positions)
        token = next_token(self.decode_step(idx, caches), **sampling)  # the prompt, in one step
        tokens = [idx, token]
        step = self.decode_step
        if cuda_graph and max_new_tokens > 1:
            step = CUDAGraphStep(lambda t: self.decode_step(t, caches), token,
                                 state=[cache.length for cache in caches])
        for _ in range(max_new_tokens - 1):
            logits = step(token) if cuda_graph else step(token, caches)
            token = next_token(logits, **sampling)
            tokens.append(token)
        return torch.cat(tokens, dim=1)


def _init_weights(module):
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
