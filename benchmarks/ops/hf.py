"""``--op hf``: Hugging Face ``transformers`` models as built (``attn_implementation="sdpa"``, provider ``eager``) vs
the same model after ``transformer.swap`` (``swapped``: backend auto; ``triton``, ``native``: forced) vs
``torch.compile`` of the eager model, and Liger-Kernel's Llama patches where installed (``liger``).

Cases (every provider builds its own model from the same seed; nothing is downloaded):
* a BERT-shaped encoder's inference on a padded batch of mixed lengths (mode ``fwd``);
* a GPT-2 training step (forward, loss, backward, AdamW step; mode ``fwd+bwd``);
* a Llama-shaped (GQA, SwiGLU, RMSNorm) training step;
* a Llama-shaped decoding loop: greedy ``generate`` with the cache (mode ``fwd``, ``shape["tokens"]`` = new tokens).

``flops`` is 2 (inference) or 6 (training) x parameters x tokens (attention not counted); ``shape["tokens"]`` is the
real (unpadded) tokens per call, for tokens/s. On the CPU the shapes are the issue's CPU targets (BERT: hidden 128,
2 heads, 512 tokens, batch 8, lengths 200-512); on a GPU, unless ``--quick``, BERT-base with batch 32 and lengths
64-512, GPT-2 small, and Llama with hidden 2048, 16 q / 4 kv heads, sequence 2048.
"""

from __future__ import annotations

import torch

import transformer
from benchmarks.suite import Case, SuiteConfig, Unavailable, compiled, probe, suite

PROVIDERS = ("eager", "torch.compile", "swapped", "triton", "native", "liger")


def _transformers():
    try:
        import transformers
    except ImportError as error:
        raise Unavailable("transformers is not installed") from error
    return transformers


def _build(kind: str, sizes: dict, provider: str, device, dtype):
    """The model of ``kind`` for one provider, on ``device`` in ``dtype``."""
    transformers = _transformers()
    torch.manual_seed(0)
    if kind == "bert":
        config = transformers.BertConfig(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                         attn_implementation="sdpa", **sizes)
        model = transformers.BertModel(config, add_pooling_layer=False)
    elif kind == "gpt2":
        config = transformers.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa",
                                         **sizes)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(attn_implementation="sdpa", **sizes)
        model = transformers.LlamaForCausalLM(config)
    model = model.to(device=device, dtype=dtype)
    if provider == "eager":
        return model
    if provider == "torch.compile":
        return compiled(model)
    if provider == "liger":
        if kind != "llama":
            raise Unavailable("Liger-Kernel is timed on the Llama cases")
        try:
            from liger_kernel.transformers import _apply_liger_kernel_to_instance
        except ImportError as error:
            raise Unavailable("liger-kernel is not installed") from error
        _apply_liger_kernel_to_instance(model=model)
        return model
    report = transformer.swap(model, backend="auto" if provider == "swapped" else provider)
    if not report.swapped:
        raise Unavailable("nothing to swap")
    return model


def _inference(kind, sizes, inputs, provider, device, dtype):
    def setup():
        model = _build(kind, sizes, provider, device, dtype).eval()

        def forward():
            with torch.no_grad():
                return model(**inputs)
        probe(forward)
        return forward
    return setup


def _training_step(kind, sizes, ids, provider, device, dtype):
    def setup():
        model = _build(kind, sizes, provider, device, dtype).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)

        def step():
            loss = model(input_ids=ids, labels=ids).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss
        probe(step)
        return step
    return setup


def _decoding(sizes, prompt, new_tokens, provider, device, dtype):
    def setup():
        if provider == "torch.compile":
            raise Unavailable("generate() recompiles per length: not a fair peer here")
        model = _build("llama", sizes, provider, device, dtype).eval()

        def generate():
            with torch.no_grad():
                return model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                      pad_token_id=0)
        probe(generate)
        return generate
    return setup


def _parameters(kind, sizes) -> int:
    with torch.device("meta"):  # counted without allocating
        return sum(p.numel() for p in _build(kind, sizes, "eager", "meta", torch.float32).parameters())


@suite("hf")
def cases(config: SuiteConfig):
    try:
        _transformers()
    except Unavailable:
        return
    device, dtype = config.device, config.dtype
    full = device.type == "cuda" and not config.quick
    generator = torch.Generator().manual_seed(0)

    # BERT-shaped encoder, padded batch of mixed lengths (right padding), inference.
    if full:
        bert = {"hidden_size": 768, "num_attention_heads": 12, "num_hidden_layers": 12, "intermediate_size": 3072}
        batch, seq, shortest = 32, 512, 64
    else:
        bert = {"hidden_size": 128, "num_attention_heads": 2, "num_hidden_layers": 2, "intermediate_size": 512}
        batch, seq, shortest = 8, 512, 200
    bert["max_position_embeddings"] = seq
    lengths = torch.randint(shortest, seq + 1, (batch,), generator=generator)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long().to(device)
    ids = torch.randint(3, 1000, (batch, seq), generator=generator).to(device)
    tokens = int(lengths.sum())
    shape = {**bert, "seq": seq, "batch": batch, "tokens": tokens}
    yield Case(op="hf", mode="fwd", shape=shape, dtype=dtype, device=device, label="BERT encoder, padded batch",
               flops=2 * _parameters("bert", bert) * tokens,
               providers={p: _inference("bert", bert, {"input_ids": ids, "attention_mask": mask}, p, device, dtype)
                          for p in PROVIDERS})

    # GPT-2 training step.
    if full:
        gpt2 = {"n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024, "vocab_size": 50304}
        batch, seq = 8, 1024
    else:
        gpt2 = {"n_embd": 128, "n_head": 4, "n_layer": 2, "n_positions": 256, "vocab_size": 1024}
        batch, seq = 4, 256
    ids = torch.randint(0, gpt2["vocab_size"], (batch, seq), generator=generator).to(device)
    shape = {**gpt2, "seq": seq, "batch": batch, "tokens": batch * seq}
    yield Case(op="hf", mode="fwd+bwd", shape=shape, dtype=dtype, device=device, label="GPT-2 training step",
               flops=6 * _parameters("gpt2", gpt2) * batch * seq,
               providers={p: _training_step("gpt2", gpt2, ids, p, device, dtype) for p in PROVIDERS})

    # Llama-shaped training step and decoding loop.
    if full:
        llama = {"hidden_size": 2048, "num_attention_heads": 16, "num_key_value_heads": 4, "num_hidden_layers": 4,
                 "intermediate_size": 5632, "vocab_size": 32000, "max_position_embeddings": 4096}
        batch, seq, prompt_len, new_tokens = 2, 2048, 128, 64
    else:
        llama = {"hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
                 "intermediate_size": 344, "vocab_size": 1024, "max_position_embeddings": 512}
        batch, seq, prompt_len, new_tokens = 4, 256, 32, 32
    ids = torch.randint(0, llama["vocab_size"], (batch, seq), generator=generator).to(device)
    shape = {**llama, "seq": seq, "batch": batch, "tokens": batch * seq}
    parameters = _parameters("llama", llama)
    yield Case(op="hf", mode="fwd+bwd", shape=shape, dtype=dtype, device=device, label="Llama training step",
               flops=6 * parameters * batch * seq,
               providers={p: _training_step("llama", llama, ids, p, device, dtype) for p in PROVIDERS})
    prompt = ids[:, :prompt_len]
    shape = {**llama, "prompt": prompt_len, "batch": batch, "tokens": batch * new_tokens}
    yield Case(op="hf", mode="fwd", shape=shape, dtype=dtype, device=device, label="Llama decoding loop",
               flops=2 * parameters * batch * new_tokens,
               providers={p: _decoding(llama, prompt, new_tokens, p, device, dtype) for p in PROVIDERS})
