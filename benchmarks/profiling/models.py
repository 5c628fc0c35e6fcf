"""The models ``python -m benchmarks profile --model ...`` builds, with random weights and the inputs of each mode.

* ``gpt``, ``bert``, ``seq2seq``: the package's own models (``transformer.GPT`` / ``BERT`` / ``Seq2Seq``), built
  with ``backend="torch"`` so that the model as given is plain PyTorch and the swapped copy runs the kernels;
* ``nn-transformer``: a GPT-style decoder written with ``torch.nn`` modules (``nn.TransformerEncoder`` with a
  causal mask; benchmarks/ops/model.py), decoded greedily without a cache in ``generate`` mode;
* ``hf:<family>`` (``gpt2``, ``bert``, ``llama``): a Hugging Face ``transformers`` model built from a config
  (nothing is downloaded); the swap replaces whatever ``transformer.swap`` supports when it runs.
Sizes: ``small`` (a few layers of width 128, for a CPU) and ``medium`` (GPT-2 medium, BERT base, the
"Attention Is All You Need" base model, TinyLlama-1.1B's shape).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import transformer

MODELS = ("gpt", "bert", "seq2seq", "nn-transformer")
HF_FAMILIES = ("gpt2", "bert", "llama")
SIZES = ("small", "medium")
# (d_model, heads, layers, vocabulary) per size; a family's own widths where it has them
_SHAPES = {"small": (128, 4, 2, 512), "medium": (1024, 16, 24, 50304)}


@dataclass
class Built:
    model: nn.Module
    inputs: object  # what profile_model takes as example_inputs
    loss_fn: Callable | None = None
    label: str = ""
    notes: list[str] = field(default_factory=list)


def build(name: str, size: str, mode: str, *, batch: int, seq_len: int, new_tokens: int,
          device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32) -> Built:
    """The model ``name`` (one of MODELS or ``hf:<family>``) of ``size`` in ``dtype`` on ``device``, and inputs for
    ``mode`` there: ``batch`` sequences of ``seq_len`` tokens (prompts of ``seq_len`` tokens in ``generate``)."""
    if size not in SIZES:
        raise ValueError(f"argument `size` must be one of {', '.join(SIZES)}; got {size!r}")
    positions = seq_len + (new_tokens if mode == "generate" else 0) + 1
    torch.manual_seed(0)
    builders = {"gpt": _gpt, "bert": _bert, "seq2seq": _seq2seq, "nn-transformer": _nn_transformer}
    if name.startswith("hf:"):
        builder = lambda *args: _hugging_face(name[3:], *args)  # noqa: E731
    elif name in builders:
        builder = builders[name]
    else:
        raise ValueError(f"argument `model` must be one of {', '.join(MODELS)} or hf:<family> "
                         f"({', '.join(HF_FAMILIES)}); got {name!r}")
    with torch.device(device):  # the weights are initialised where they will run
        built = builder(size, mode, batch, seq_len, positions, device)
    built.model.to(dtype=dtype)
    return built


def _ids(vocab, batch, length, device):
    return torch.randint(3, vocab, (batch, length), device=device)  # ids 0-2: pad, BOS, EOS of the seq2seq model


def _next_token_loss(ids):
    """Cross-entropy of each position's logits against the next token (the last position is not scored)."""
    def loss(logits):
        logits = getattr(logits, "logits", logits)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    return loss


def _no_generate(name, mode):
    if mode == "generate":
        raise ValueError(f"argument `mode`: {name} is an encoder (no decoding); use train or inference")


def _gpt(size, mode, batch, seq_len, positions, device):
    d, heads, layers, vocab = _SHAPES[size]
    config = transformer.GPTConfig(vocab_size=vocab, max_seq_len=positions, d_model=d, n_heads=heads,
                                   n_layers=layers)
    ids = _ids(vocab, batch, seq_len, device)
    inputs = (ids, ids.roll(-1, dims=1)) if mode == "train" else (ids,)  # train: (idx, targets) -> (logits, loss)
    return Built(transformer.GPT(config, backend="torch"), inputs, label=f"GPT ({size})")


def _bert(size, mode, batch, seq_len, positions, device):
    _no_generate("bert", mode)
    d, heads, layers, vocab = (768, 12, 12, 30522) if size == "medium" else _SHAPES["small"]
    config = transformer.BERTConfig(vocab_size=vocab, max_seq_len=positions, d_model=d, n_heads=heads,
                                    n_layers=layers)
    ids = _ids(vocab, batch, seq_len, device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if mode == "train":
        scored = torch.rand(ids.shape, device=device) < 0.15  # 15% of the positions, as BERT's masked LM
        inputs["labels"] = ids.masked_fill(~scored, -100)
    return Built(transformer.BERT(config, backend="torch"), inputs, label=f"BERT ({size})")


def _seq2seq(size, mode, batch, seq_len, positions, device):
    d, heads, layers, vocab = (512, 8, 6, 32000) if size == "medium" else _SHAPES["small"]
    config = transformer.Seq2SeqConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, max_seq_len=positions,
                                       d_model=d, n_heads=heads, n_encoder_layers=layers, n_decoder_layers=layers)
    src, tgt = _ids(vocab, batch, seq_len, device), _ids(vocab, batch, seq_len, device)
    tgt[:, 0] = config.bos_token_id
    model = transformer.Seq2Seq(config, backend="torch")
    if mode == "generate":
        return Built(model, (src,), label=f"Seq2Seq ({size})",
                     notes=["generate stops early if every row emits EOS; tokens/s assumes it did not"])
    return Built(model, (src, tgt), loss_fn=_next_token_loss(tgt) if mode == "train" else None,
                 label=f"Seq2Seq ({size})")


def _nn_transformer(size, mode, batch, seq_len, positions, device):
    from ..ops.model import NNDecoder

    d, heads, layers, vocab = _SHAPES[size]
    ids = _ids(vocab, batch, seq_len, device)
    return Built(NNDecoder(vocab, d, heads, layers, positions), (ids,),
                 loss_fn=_next_token_loss(ids) if mode == "train" else None, label=f"torch.nn decoder ({size})")


def _hugging_face(family, size, mode, batch, seq_len, positions, device):
    try:
        import transformers
    except ImportError as error:
        raise ValueError("argument `model`: hf:<family> needs the transformers package") from error
    small = size == "small"
    if family == "gpt2":
        d, heads, layers, vocab = _SHAPES[size]
        special = min(50256, vocab - 1)  # GPT-2's end-of-text id, inside the small vocabulary too
        config = transformers.GPT2Config(n_embd=d, n_head=heads, n_layer=layers, vocab_size=vocab,
                                         n_positions=positions, bos_token_id=special, eos_token_id=special)
        model_cls = transformers.GPT2LMHeadModel
    elif family == "bert":
        _no_generate("hf:bert", mode)
        d, heads, layers, vocab = _SHAPES["small"] if small else (768, 12, 12, 30522)
        config = transformers.BertConfig(hidden_size=d, num_attention_heads=heads, num_hidden_layers=layers,
                                         intermediate_size=4 * d, vocab_size=vocab, max_position_embeddings=positions)
        model_cls = transformers.BertForMaskedLM
    elif family == "llama":
        d, heads, kv_heads, layers, ffn, vocab = (128, 4, 2, 2, 344, 512) if small else (2048, 32, 4, 22, 5632, 32000)
        config = transformers.LlamaConfig(hidden_size=d, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                          num_hidden_layers=layers, intermediate_size=ffn, vocab_size=vocab,
                                          max_position_embeddings=positions)
        model_cls = transformers.LlamaForCausalLM
    else:
        raise ValueError(f"argument `model`: hf:{family} is not built here; families: {', '.join(HF_FAMILIES)}")
    config._attn_implementation = "sdpa"
    model = model_cls(config)
    ids = _ids(config.vocab_size, batch, seq_len, device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if mode == "train":
        inputs["labels"] = ids  # the model shifts them: its output's .loss is the next-token loss
    return Built(model, inputs, label=f"hf:{family} ({size})")
