"""Hugging Face ``transformers`` models on the fused kernels (imported by ``transformer.swap`` when it meets a
``PreTrainedModel``; importing it registers the attention function, so
``from_pretrained(..., attn_implementation="fused_kernels")`` works too).

* :mod:`.attention`: the attention and mask functions registered as ``"fused_kernels"``.
* :mod:`.modules`: the fused forwards (RMSNorm, gated MLP, GPT-2's Conv1D MLP, BERT's Add & Norm and feed-forward).
* :mod:`.families`: which modules of which model family take them (BERT, RoBERTa, GPT-2, Llama, Mistral, Qwen2).
* :mod:`.swap`: the swap of one model, class by instance, and its undoing.
"""

from .attention import NAME, fused_kernels_attention, fused_kernels_mask, register
from .families import FAMILIES
from .swap import swap_model, unswap_model

register()

__all__ = ["FAMILIES", "NAME", "fused_kernels_attention", "fused_kernels_mask", "register", "swap_model",
           "unswap_model"]
