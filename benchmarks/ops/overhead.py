"""``--op overhead``: the host time of one call, torch's equivalent op against ours, on tiny tensors.

With tiny tensors a call costs its Python, dispatch and autograd bookkeeping, which a GPU step of small shapes (one
decoded token, a small batch) pays in full for every kernel it launches (issue 13; performance.md's target: ours
within 2x of torch's). Every public op is called through its public function with ``backend="auto"``, once without
autograd (``torch.no_grad``) and once on inputs that require grad (the forward only: the graph is built, then freed).

Cases (providers ``torch`` and ``ours``; the case's shape says the call and ``grad``):
* ``scaled_dot_product_attention``: no mask, causal, a bool ``(Sq, Sk)`` mask, a key padding mask (torch: SDPA with
  the equivalent bool mask, built once outside the timed call);
* ``varlen_attention`` (torch: SDPA on the same tokens as a padded batch), ``attention_with_kv_cache`` (torch: SDPA of
  the new token over the valid part of the cache);
* ``layer_norm`` / ``rms_norm`` with and without ``residual`` (torch: ``x + r``, then ``F.layer_norm`` /
  ``F.rms_norm``); ``masked_softmax`` (torch: ``masked_fill`` then ``softmax``); ``linear`` (``F.linear``) and with
  GELU; ``feed_forward`` (torch: linear, GELU, linear, ``+ residual``).
On a GPU also the launch-bound models (mode ``fwd``, inference): a one-token decoding step of a GPT-2-small shape at
128 cached positions (eager = the model on ``backend="torch"``, swapped = ``backend="auto"``, and the swapped step
replayed from a CUDA graph), and a BERT-base encoder (``nn.TransformerEncoder``) forward at batch 1, length 128
(eager torch.nn, swapped, swapped replayed from a CUDA graph).

``python -m benchmarks --op overhead --threads 1`` prints, after the usual table, one line per call with torch's and
our microseconds and the ratio ours / torch (:func:`overhead_table`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch import nn

import kernels
import transformer
from benchmarks.suite import Case, SuiteConfig, probe, suite

B, H, S, D = 1, 2, 8, 16  # attention: (B, H, S, D)
ROWS, HIDDEN, FFN = 4, 64, 128  # norms, linear, feed-forward


def _leaves(tensors, grad):
    return [t.detach().requires_grad_(grad) if t.is_floating_point() else t for t in tensors]


def _closure(fn, tensors, grad):
    """Setup of one provider: fresh leaves (requiring grad or not), one probing call, then the call to time."""
    def setup():
        inputs = _leaves(tensors, grad)

        def call():
            if grad:
                return fn(*inputs)
            with torch.no_grad():
                return fn(*inputs)
        probe(call)
        return call
    return setup


def _op_calls(device, dtype):
    """(name, torch's call, its inputs, our call, its inputs) for every public op."""
    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    q, k, v = randn(B, H, S, D), randn(B, H, S, D), randn(B, H, S, D)
    keep = torch.rand(S, S, device=device) > 0.3
    keep[:, 0] = True
    padding = torch.zeros(B, S, dtype=torch.bool, device=device)
    padding[:, S - 3:] = True
    keep_padding = ~padding[:, None, None, :]  # (B, 1, 1, S), True = take part
    cu_seqlens = torch.tensor([0, S, 2 * S - 3], dtype=torch.int32, device=device)  # two sequences, packed
    packed = [randn(2 * S - 3, H, D) for _ in range(3)]  # (total, H, D)
    padded = [randn(2, H, S, D) for _ in range(3)]  # the same two sequences as a padded batch
    cache_k, cache_v, new_q = randn(B, H, 4 * S, D), randn(B, H, 4 * S, D), randn(B, H, 1, D)
    seqlens = torch.full((B,), S, dtype=torch.int32, device=device)
    x, r, w, b = randn(ROWS, HIDDEN), randn(ROWS, HIDDEN), randn(HIDDEN), randn(HIDDEN)
    scores = randn(B, H, S, S)
    w_lin, b_lin = randn(HIDDEN, HIDDEN), randn(HIDDEN)
    w1, b1, w2, b2 = randn(FFN, HIDDEN), randn(FFN), randn(HIDDEN, FFN), randn(HIDDEN)
    sdpa, ours = F.scaled_dot_product_attention, kernels.scaled_dot_product_attention
    qkv = [q, k, v]
    return [
        ("scaled_dot_product_attention", sdpa, qkv, ours, qkv),
        ("scaled_dot_product_attention:causal", lambda *a: sdpa(*a, is_causal=True), qkv,
         lambda *a: ours(*a, is_causal=True), qkv),
        ("scaled_dot_product_attention:bool_mask", lambda *a: sdpa(*a, attn_mask=keep), qkv,
         lambda *a: ours(*a, attn_mask=keep), qkv),
        ("scaled_dot_product_attention:key_padding", lambda *a: sdpa(*a, attn_mask=keep_padding), qkv,
         lambda *a: ours(*a, key_padding_mask=padding), qkv),
        ("varlen_attention", lambda *a: sdpa(*a, is_causal=True), padded,
         lambda *a: kernels.varlen_attention(*a, cu_seqlens, cu_seqlens, S, S, is_causal=True), packed),
        ("attention_with_kv_cache", lambda q, k, v: sdpa(q, k[:, :, :S], v[:, :, :S]), [new_q, cache_k, cache_v],
         lambda q, k, v: kernels.attention_with_kv_cache(q, k, v, cache_seqlens=seqlens), [new_q, cache_k, cache_v]),
        ("layer_norm", lambda x, w, b: F.layer_norm(x, (HIDDEN,), w, b), [x, w, b],
         lambda x, w, b: kernels.layer_norm(x, (HIDDEN,), w, b), [x, w, b]),
        ("layer_norm+residual", lambda x, r, w, b: F.layer_norm(x + r, (HIDDEN,), w, b), [x, r, w, b],
         lambda x, r, w, b: kernels.layer_norm(x, (HIDDEN,), w, b, residual=r), [x, r, w, b]),
        ("rms_norm", lambda x, w: F.rms_norm(x, (HIDDEN,), w, 1e-6), [x, w],
         lambda x, w: kernels.rms_norm(x, (HIDDEN,), w, 1e-6), [x, w]),
        ("rms_norm+residual", lambda x, r, w: F.rms_norm(x + r, (HIDDEN,), w, 1e-6), [x, r, w],
         lambda x, r, w: kernels.rms_norm(x, (HIDDEN,), w, 1e-6, residual=r), [x, r, w]),
        ("masked_softmax", lambda s: torch.softmax((s * 0.25).masked_fill(~keep, float("-inf")), dim=-1), [scores],
         lambda s: kernels.masked_softmax(s, keep, scale=0.25), [scores]),
        ("linear", F.linear, [x, w_lin, b_lin], kernels.linear, [x, w_lin, b_lin]),
        ("linear+gelu", lambda *a: F.gelu(F.linear(*a)), [x, w_lin, b_lin],
         lambda *a: kernels.linear(*a, activation="gelu"), [x, w_lin, b_lin]),
        ("feed_forward", lambda x, w1, b1, w2, b2: x + F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2),
         [x, w1, b1, w2, b2],
         lambda x, w1, b1, w2, b2: kernels.feed_forward(x, w1, b1, w2, b2, activation="gelu", residual=x),
         [x, w1, b1, w2, b2]),
    ]


@suite("overhead")
def cases(config: SuiteConfig):
    device, dtype = config.device, config.dtype
    if "fwd" not in config.modes:
        return
    for name, torch_call, torch_inputs, our_call, our_inputs in _op_calls(device, dtype):
        for grad in (False, True):
            yield Case(op="overhead", mode="fwd", shape={"call": name, "grad": grad},
                       dtype=dtype, device=device, label="tiny tensors",
                       providers={"torch": _closure(torch_call, torch_inputs, grad),
                                  "ours": _closure(our_call, our_inputs, grad)})
    if device.type == "cuda":
        yield from _model_cases(config)


# -- launch-bound models (GPU) -------------------------------------------------------------------------------------

def _graphed(step):
    """The step replayed from a CUDA graph (transformer.generation.CUDAGraphStep: warm-up, capture)."""
    from transformer.generation import CUDAGraphStep

    return CUDAGraphStep(step)


def _gpt_decode(backend, cuda_graph, device, dtype, context=128):
    """One decoding step of a GPT-2-small shape over ``context`` cached positions (the cache rewound every call)."""
    def setup():
        torch.manual_seed(0)
        config = transformer.GPTConfig(vocab_size=50304, max_seq_len=1024, d_model=768, n_heads=12, n_layers=12)
        model = transformer.GPT(config, backend=backend).to(device=device, dtype=dtype).eval()
        caches = model.new_static_cache(1, context + 1)
        token = torch.randint(0, config.vocab_size, (1, 1), device=device)
        with torch.no_grad():
            model.decode_step(torch.randint(0, config.vocab_size, (1, context), device=device), caches)

        @torch.no_grad()
        def step():
            for cache in caches:
                cache.length.fill_(context)  # rewind: every timed call decodes position `context`
            return model.decode_step(token, caches)
        return _graphed(step) if cuda_graph else _probed(step)
    return setup


def _bert_forward(provider, device, dtype, seq=128):
    """A BERT-base encoder (12 post-norm layers, 768 wide, 12 heads, GELU) forward at batch 1."""
    def setup():
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(768, 12, 3072, dropout=0.0, activation="gelu", batch_first=True)
        model = nn.TransformerEncoder(layer, 12, enable_nested_tensor=False).to(device=device, dtype=dtype).eval()
        if provider != "eager":
            model = copy.deepcopy(model)
            transformer.swap(model)
        x = torch.randn(1, seq, 768, device=device, dtype=dtype)

        @torch.no_grad()
        def forward():
            return model(x)
        return _graphed(forward) if provider == "swapped + CUDA graph" else _probed(forward)
    return setup


def _probed(call):
    probe(call)
    return call


def _model_cases(config: SuiteConfig):
    device, dtype = config.device, config.dtype
    yield Case(op="overhead", mode="fwd", shape={"call": "gpt2_small_decode_step", "context": 128, "batch": 1},
               dtype=dtype, device=device, label="launch-bound model",
               providers={"eager": _gpt_decode("torch", False, device, dtype),
                          "swapped": _gpt_decode("auto", False, device, dtype),
                          "swapped + CUDA graph": _gpt_decode("auto", True, device, dtype)})
    yield Case(op="overhead", mode="fwd", shape={"call": "bert_base_forward", "seq": 128, "batch": 1},
               dtype=dtype, device=device, label="launch-bound model",
               providers={name: _bert_forward(name, device, dtype)
                          for name in ("eager", "swapped", "swapped + CUDA graph")})


# -- the summary table ---------------------------------------------------------------------------------------------

def overhead_table(results) -> str:
    """One row per call: microseconds per call of torch and ours, and ours / torch, without and with autograd; for
    the model cases each provider's milliseconds and its speed-up over eager. Empty when no overhead case ran."""
    ops: dict[str, dict] = {}
    models: dict[str, dict] = {}
    for r in results:
        if r.op != "overhead" or r.status != "ok":
            continue
        call = r.shape.split()[0].removeprefix("call=")
        if "launch-bound" in r.shape:
            models.setdefault(call, {})[r.provider] = r.median_ms
        else:
            grad = "grad=True" in r.shape
            ops.setdefault(call, {})[(r.provider, grad)] = r.median_ms * 1e3
    lines = []
    if ops:
        rows = []
        for call, t in ops.items():
            row = [call]
            for grad in (False, True):
                torch_us, ours_us = t.get(("torch", grad)), t.get(("ours", grad))
                row += [_fmt(torch_us), _fmt(ours_us),
                        f"{ours_us / torch_us:.2f}x" if torch_us and ours_us else "-"]
            rows.append(row)
        lines.append(tabulate(rows, headers=["call", "no grad: torch us", "ours us", "ours / torch",
                                             "requires grad: torch us", "ours us", "ours / torch"]))
    if models:
        rows = [[call, *(f"{t[p]:.4g} ms ({t['eager'] / t[p]:.2f}x eager)" if p in t and "eager" in t else "-"
                         for p in ("eager", "swapped", "swapped + CUDA graph"))] for call, t in models.items()]
        lines.append(tabulate(rows, headers=["model", "eager", "swapped", "swapped + CUDA graph"]))
    return "\n\n".join(lines)


def _fmt(value):
    return "-" if value is None else f"{value:.1f}"


