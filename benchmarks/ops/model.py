"""``--op model``: whole models, eager torch.nn vs the same model after ``transformer.swap`` vs ``torch.compile``.

Cases (each provider builds its own copy of the model from the same seed):
* a GPT-style decoder made of torch.nn modules (pre-norm ``nn.TransformerEncoder`` with a causal mask, tied
  embeddings): a whole training step (forward, loss, backward, AdamW step), mode ``fwd+bwd``;
* the same decoder's inference forward, mode ``fwd``;
* an ``nn.TransformerEncoder`` (post-norm, BERT-base-like) inference forward with padding masks of mixed lengths,
  where eager torch takes its nested-tensor fast path;
* cached generation of 64 tokens (greedy, batch 1) by the package's small ``transformer.GPT``: ``eager`` runs the
  same weights through plain torch ops (:class:`EagerGPT`: ``F.layer_norm``, ``F.linear``, SDPA, a growing key/value
  cache), ``swapped`` is ``GPT.generate`` on the fused kernels (``native`` / ``triton``: that backend forced).

``flops`` is the model FLOPs per call (6 * parameters * tokens for training, 2 * parameters * tokens for inference,
attention not counted), so the TFLOP/s column is the usual model-FLOPs rate; ``shape["tokens"]`` is the tokens per
call, for tokens/s. Full size on a GPU is the issue's target: 24 layers, d_model 1024, 16 heads, sequence 1024.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import transformer
from benchmarks.suite import Case, SuiteConfig, Unavailable, compiled, suite


class NNDecoder(nn.Module):
    """A GPT-style decoder written with plain torch.nn modules, the way a user would."""

    def __init__(self, vocab, d_model, heads, layers, seq_len):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.positions = nn.Embedding(seq_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(seq_len), persistent=False)

    def forward(self, idx):
        s = idx.shape[1]
        x = self.embed(idx) + self.positions(torch.arange(s, device=idx.device))
        x = self.blocks(x, mask=self.causal[:s, :s].to(x.dtype), is_causal=True)
        return self.head(x)


class EagerGPT:
    """A ``transformer.GPT``'s weights computed with plain torch ops and a growing key/value cache: what the model
    costs in eager PyTorch (pre-norm blocks, GELU MLP, tied head), the baseline of its cached generation."""

    def __init__(self, gpt: transformer.GPT):
        self.gpt = gpt

    @torch.no_grad()
    def generate(self, idx, max_new_tokens):
        gpt = self.gpt
        caches = [None] * len(gpt.blocks)
        tokens, step, offset = idx, idx, 0
        for _ in range(max_new_tokens):
            t = step.shape[1]
            x = gpt.wte(step) + gpt.wpe(torch.arange(offset, offset + t, device=step.device))
            for i, block in enumerate(gpt.blocks):
                x = self._block(block, x, caches, i)
            token = gpt.lm_head(_norm(gpt.ln_f, x))[:, -1].argmax(-1, keepdim=True)
            tokens, step, offset = torch.cat([tokens, token], dim=1), token, offset + t
        return tokens

    @staticmethod
    def _block(block, x, caches, i):
        attn, mlp = block.attn, block.mlp
        b, t, e = x.shape
        qkv = F.linear(_norm(block.ln_1, x), attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, T, D)
        if caches[i] is not None:
            k, v = torch.cat([caches[i][0], k], dim=2), torch.cat([caches[i][1], v], dim=2)
        caches[i] = (k, v)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)  # t > 1: the prompt, with no cache yet
        x = x + F.linear(out.transpose(1, 2).reshape(b, t, e), attn.out_proj.weight, attn.out_proj.bias)
        h = F.gelu(F.linear(_norm(block.ln_2, x), mlp.linear1.weight, mlp.linear1.bias))
        return x + F.linear(h, mlp.linear2.weight, mlp.linear2.bias)


def _norm(norm, x):
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _generation(prompt, new_tokens, provider, device, dtype):
    def setup():
        torch.manual_seed(0)
        config = transformer.GPTConfig(vocab_size=256, max_seq_len=256, d_model=128, n_heads=4, n_layers=4)
        backend = "auto" if provider in ("eager", "swapped") else provider
        model = transformer.GPT(config, backend=backend).to(device=device, dtype=dtype).eval()
        generate = EagerGPT(model).generate if provider == "eager" else model.generate
        return _probe(lambda: generate(prompt, new_tokens))
    return setup


def _variant(build, provider, device, dtype):
    """The model for one provider: eager torch.nn, swapped (backend auto/triton/native) or torch.compile'd."""
    torch.manual_seed(0)
    model = build().to(device=device, dtype=dtype)
    if provider == "eager":
        return model
    if provider == "torch.compile":
        return compiled(model)
    backend = "auto" if provider == "swapped" else provider
    report = transformer.swap(model, backend=backend)
    if not report.swapped:
        raise Unavailable("nothing to swap")
    return model


def _probe(fn):
    """Runs a provider's closure once; a backend that cannot serve the model becomes Unavailable."""
    from kernels import BackendError

    try:
        fn()
    except BackendError as error:
        raise Unavailable(str(error)) from error
    return fn


def _training_step(build, idx, provider, device, dtype):
    def setup():
        model = _variant(build, provider, device, dtype)
        model.train()
        parameters = list(model.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=1e-4, foreach=True)

        def step():
            logits = model(idx[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1).float(), idx[:, 1:].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss
        return _probe(step)
    return setup


def _inference(build, inputs, provider, device, dtype):
    def setup():
        model = _variant(build, provider, device, dtype).eval()

        def forward():
            with torch.no_grad():
                return model(*inputs)
        return _probe(forward)
    return setup


PROVIDERS = ("eager", "torch.compile", "swapped", "triton", "native")


@suite("model")
def cases(config: SuiteConfig):
    device, dtype = config.device, config.dtype
    full = device.type == "cuda" and not config.quick
    if full:
        vocab, d_model, heads, layers, seq, batch = 50304, 1024, 16, 24, 1024, 8
        enc_d, enc_heads, enc_layers, enc_batch, enc_seq = 768, 12, 12, 32, 512
    else:
        vocab, d_model, heads, layers, seq, batch = 256, 128, 4, 2, 128, 4
        enc_d, enc_heads, enc_layers, enc_batch, enc_seq = 128, 4, 2, 8, 64

    def decoder():
        return NNDecoder(vocab, d_model, heads, layers, seq)

    parameters = sum(p.numel() for p in decoder().parameters())
    idx = torch.randint(0, vocab, (batch, seq + 1), device=device)
    tokens = batch * seq
    shape = {"layers": layers, "d_model": d_model, "heads": heads, "seq": seq, "batch": batch, "tokens": tokens}
    yield Case(op="model", mode="fwd+bwd", shape=shape, dtype=dtype, device=device, flops=6 * parameters * tokens,
               label="GPT decoder training step",
               providers={p: _training_step(decoder, idx, p, device, dtype) for p in PROVIDERS})
    yield Case(op="model", mode="fwd", shape=shape, dtype=dtype, device=device, flops=2 * parameters * tokens,
               label="GPT decoder inference",
               providers={p: _inference(decoder, (idx[:, :-1],), p, device, dtype) for p in PROVIDERS})

    def encoder():
        layer = nn.TransformerEncoderLayer(enc_d, enc_heads, 4 * enc_d, dropout=0.0, activation="gelu",
                                           batch_first=True)
        return nn.TransformerEncoder(layer, enc_layers)

    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(enc_seq // 8, enc_seq + 1, (enc_batch,), generator=generator)
    padding = (torch.arange(enc_seq)[None, :] >= lengths[:, None]).to(device)  # (B, S), True = padding
    x = torch.randn(enc_batch, enc_seq, enc_d, generator=generator).to(device=device, dtype=dtype)
    enc_parameters = sum(p.numel() for p in encoder().parameters())
    real_tokens = int(lengths.sum())
    enc_shape = {"layers": enc_layers, "d_model": enc_d, "heads": enc_heads, "seq": enc_seq, "batch": enc_batch,
                 "tokens": real_tokens}
    yield Case(op="model", mode="fwd", shape=enc_shape, dtype=dtype, device=device,
               flops=2 * enc_parameters * real_tokens, label="nn.TransformerEncoder inference, padding mask",
               providers={p: _inference(encoder, (x, None, padding), p, device, dtype) for p in PROVIDERS})

    prompt = torch.randint(0, 256, (1, 16), device=device)
    new_tokens = 16 if config.quick else 64
    yield Case(op="model", mode="fwd", shape={"layers": 4, "d_model": 128, "heads": 4, "prompt": 16,
                                               "new": new_tokens, "batch": 1, "tokens": new_tokens},
               dtype=dtype, device=device, label="GPT cached generation",
               providers={p: _generation(prompt, new_tokens, p, device, dtype)
                          for p in ("eager", "swapped", "triton", "native")})
