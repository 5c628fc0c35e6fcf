"""Put a Hugging Face Llama on the fused kernels with one call: the swap report, the largest difference of the logits
on a left-padded batch, the same greedy tokens, and tokens/s of a forward and of generation before and after.

The model is built from a small config (nothing is downloaded); any ``LlamaForCausalLM``, ``MistralForCausalLM``,
``Qwen2ForCausalLM``, ``GPT2LMHeadModel`` or BERT / RoBERTa model is swapped the same way.

    python examples/swap_hugging_face.py --backend auto
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

import transformer  # noqa: E402
from examples._common import backend_report, median_seconds, parser  # noqa: E402


def tokens_per_second(fn, tokens, repeats):
    """Tokens/s of ``fn`` at its median time over ``repeats`` timed calls."""
    return tokens / median_seconds(fn, repeats)


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=16)
    args = p.parse_args(argv)
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        sys.exit("this example needs transformers (pip install transformers)")

    torch.manual_seed(args.seed)
    config = LlamaConfig(vocab_size=1024, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         attn_implementation="sdpa", pad_token_id=0)
    model = LlamaForCausalLM(config).to(args.device).eval()
    ids = torch.randint(1, 1024, (4, 128), device=args.device)
    mask = torch.ones_like(ids)
    mask[1, :40], mask[2, :90] = 0, 0  # left padding, lengths 128, 88, 38, 128
    ids = ids.masked_fill(mask == 0, 0)
    real_tokens = int(mask.sum())

    def forward():
        with torch.no_grad():
            return model(ids, attention_mask=mask).logits

    def generate():
        return model.generate(ids, attention_mask=mask, max_new_tokens=args.new_tokens, do_sample=False)

    before_logits, before_tokens = forward(), generate()
    before = (tokens_per_second(forward, real_tokens, args.repeats),
              tokens_per_second(generate, ids.shape[0] * args.new_tokens, args.repeats))

    report = transformer.swap(model, backend=args.backend)
    print(report)
    print(backend_report(args.backend, args.device))
    after_logits, after_tokens = forward(), generate()
    valid = mask.bool()
    error = (after_logits[valid] - before_logits[valid]).abs().max().item()
    print(f"max |logits swapped - sdpa| over real tokens = {error:.2e}; "
          f"greedy tokens identical: {torch.equal(after_tokens, before_tokens)}")
    after = (tokens_per_second(forward, real_tokens, args.repeats),
             tokens_per_second(generate, ids.shape[0] * args.new_tokens, args.repeats))
    for what, b, a in zip(("forward (padded batch)", "generate"), before, after):
        print(f"{what:<24} sdpa {b:10.0f} tokens/s   swapped {a:10.0f} tokens/s   ({a / b:.2f}x)")
    transformer.unswap(model)
    print(f"after unswap: attention {model.config._attn_implementation!r}, "
          f"MLP {type(model.model.layers[0].mlp).__name__}")


if __name__ == "__main__":
    main()
