"""benchmarks.profile_model: each mode, the record's schema, block shares, traces, the swapped variant's attribution,
the caller's model left as it was, and bad arguments."""

import inspect
import json

import pytest
import torch
from torch import nn

import transformer
from benchmarks import Profile, profile_model
from benchmarks.profiling.blocks import BLOCKS

FAST = {"steps": 2, "warmup": 1, "profile_steps": 1}
VARIANT_KEYS = {"name", "step_time_s", "steps", "tokens_per_step", "tokens_per_s", "flops_per_step",
                "achieved_tflops", "mfu", "peak_memory_bytes", "parameter_bytes", "blocks", "profiled_steps",
                "profiled_time_s", "top", "ours_share", "trace", "swap_report"}


def test_signature_is_the_contract():
    parameters = inspect.signature(profile_model).parameters
    names = list(parameters)
    assert names[:2] == ["model", "example_inputs"]
    contract = ["mode", "steps", "warmup", "swap", "backend", "loss_fn", "optimizer", "out"]
    assert names[2:2 + len(contract)] == contract
    assert all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in names[2:])
    assert parameters["mode"].default == "train" and parameters["backend"].default == "auto"
    assert parameters["loss_fn"].default is None and parameters["optimizer"].default is None
    assert parameters["out"].default is None


@pytest.mark.parametrize("mode", ["train", "inference", "generate"])
def test_each_mode_record_schema_and_shares(mode, decoder, ids, ceilings, tmp_path):
    profile = profile_model(decoder, (ids,), mode=mode, ceilings=ceilings, new_tokens=2, out=str(tmp_path), **FAST)
    assert isinstance(profile, Profile)
    record = json.loads(profile.to_json())
    assert record["mode"] == mode and record["device"] == "cpu" and record["schema_version"] == 1
    assert [v["name"] for v in record["variants"]] == ["eager", "swapped"]
    assert record["ceilings"]["matmul_tflops"] == 0.1
    for variant in record["variants"]:
        assert set(variant) == VARIANT_KEYS and 0 < len(variant["top"]) <= 12
        assert set(variant["blocks"]) == set(BLOCKS)
        assert sum(b["share"] for b in variant["blocks"].values()) == pytest.approx(1.0, abs=1e-6)
        time = variant["step_time_s"]
        assert 0 < time["p20"] <= time["median"] <= time["p80"]
        assert variant["flops_per_step"] > 0 and variant["mfu"] > 0
        expected_tokens = 2 * 2 if mode == "generate" else ids.numel()
        assert variant["tokens_per_step"] == expected_tokens
        assert variant["tokens_per_s"] == pytest.approx(expected_tokens / time["median"])
        assert variant["top"] and all(set(row) == {"name", "seconds", "calls", "block", "ours", "share"}
                                      for row in variant["top"])
        with open(variant["trace"]) as handle:
            trace = json.load(handle)
        assert trace["traceEvents"]
    names = {e.get("name") for e in trace["traceEvents"]}
    assert any(str(name).startswith("attention: ") for name in names)  # the module ranges are in the trace
    assert (tmp_path / "profile.json").exists() and (tmp_path / "blocks.png").exists()
    assert "eager" in str(profile) and "swapped" in str(profile)


def test_swapped_variant_attributes_attention_to_our_ops(decoder, ids, ceilings):
    # Every op listed: on a tiny model the attention ops' rank among the 12 slowest depends on the machine's load.
    profile = profile_model(decoder, (ids,), mode="train", ceilings=ceilings, top=1000, **FAST)
    eager, swapped = profile["eager"], profile["swapped"]
    assert swapped.block_share("attention") > 0 and eager.block_share("attention") > 0
    attention_rows = [row for row in swapped.top if row["block"] == "attention"]
    assert {"kernels::attention_forward", "kernels::attention_backward"} & {r["name"] for r in attention_rows}
    assert all(row["ours"] for row in attention_rows if row["name"].startswith("kernels::"))
    assert sum(row["seconds"] for row in attention_rows if row["ours"]) > 0  # attention time reaches our ops
    assert not any("scaled_dot_product" in row["name"] for row in swapped.top)
    assert not any(row["ours"] for row in eager.top) and eager.ours_share == 0.0
    assert swapped.ours_share > 0
    assert "nn.MultiheadAttention -> transformer.MultiheadAttention" in swapped.swap_report


def test_both_leaves_the_callers_model_untouched(decoder, ids, ceilings):
    optimizer = torch.optim.SGD(decoder.parameters(), lr=0.1, momentum=0.9)
    decoder.eval()
    classes = [type(m) for m in decoder.modules()]
    parameters = list(decoder.parameters())
    state = {k: v.clone() for k, v in decoder.state_dict().items()}
    hooks = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in decoder.modules()]
    profile = profile_model(decoder, (ids,), mode="train", swap="both", optimizer=optimizer, ceilings=ceilings,
                            **FAST)
    assert profile.speedup is not None
    assert [type(m) for m in decoder.modules()] == classes
    assert all(a is b for a, b in zip(decoder.parameters(), parameters))
    assert all(torch.equal(v, state[k]) for k, v in decoder.state_dict().items())  # trained copies only
    assert not decoder.training  # its mode restored
    assert [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in decoder.modules()] == hooks
    assert optimizer.state == {} and all(p.grad is None for p in decoder.parameters())


def test_inference_on_the_model_itself_restores_its_mode(decoder, ids, ceilings):
    decoder.train()
    profile_model(decoder, ids, mode="inference", swap=False, ceilings=ceilings, **FAST)
    assert decoder.training
    assert all(not hasattr(m, "attend") or "attend" not in vars(m) for m in decoder.modules())


def test_swap_true_profiles_only_a_swapped_copy(decoder, ids, ceilings):
    profile = profile_model(decoder, {"idx": ids}, mode="inference", swap=True, ceilings=ceilings, **FAST)
    assert [v.name for v in profile.variants] == ["swapped"] and profile.speedup is None
    assert isinstance(decoder.blocks.layers[0].self_attn, nn.MultiheadAttention)
    assert type(decoder.blocks.layers[0].self_attn) is nn.MultiheadAttention


def test_eager_and_swapped_count_the_same_flops(decoder, ids, ceilings):
    for mode in ("train", "inference"):
        profile = profile_model(decoder, (ids,), mode=mode, ceilings=ceilings, **FAST)
        assert profile["eager"].flops_per_step == profile["swapped"].flops_per_step


def test_bmm_attention_and_our_kernels_count_the_same_flops(ceilings):
    config = transformer.GPTConfig(vocab_size=32, max_seq_len=16, d_model=16, n_heads=2, n_layers=1)
    model = transformer.GPT(config, backend="torch")  # attention by bmm + softmax; the swapped copy: our kernels
    ids = torch.randint(0, 32, (2, 8))
    profile = profile_model(model, (ids, ids), mode="train", ceilings=ceilings, **FAST)
    assert profile["eager"].flops_per_step == profile["swapped"].flops_per_step


def test_flops_of_a_linear_model(ceilings):
    model = nn.Sequential(nn.Linear(8, 12), nn.GELU(), nn.Linear(12, 4))
    x = torch.randn(5, 8)
    forward = 2 * 5 * (8 * 12 + 12 * 4)
    inference = profile_model(model, x, mode="inference", swap=False, ceilings=ceilings, **FAST)
    assert inference["eager"].flops_per_step == forward
    train = profile_model(model, x, mode="train", swap=False, ceilings=ceilings, **FAST)
    assert train["eager"].flops_per_step == 3 * forward - 2 * 5 * 8 * 12  # no input gradient for the first layer


def test_generate_calls_the_models_generate(ceilings):
    config = transformer.GPTConfig(vocab_size=32, max_seq_len=16, d_model=16, n_heads=2, n_layers=1)
    model = transformer.GPT(config, backend="torch")
    prompt = torch.randint(0, 32, (2, 4))
    profile = profile_model(model, prompt, mode="generate", new_tokens=3, ceilings=ceilings, top=1000, **FAST)
    assert profile["eager"].tokens_per_step == 6
    assert profile["eager"].flops_per_step == profile["swapped"].flops_per_step
    assert profile["swapped"].block_share("attention") > 0
    assert any(row["ours"] and row["block"] == "attention" for row in profile["swapped"].top)


def test_custom_loss_and_given_tokens(decoder, ids, ceilings):
    calls = []

    def loss_fn(logits):
        calls.append(logits.shape)
        return logits.float().logsumexp(-1).mean()

    profile = profile_model(decoder, (ids,), mode="train", swap=False, loss_fn=loss_fn, tokens=100,
                            ceilings=ceilings, **FAST)
    assert calls and calls[0] == (2, 8, 32)
    assert profile["eager"].tokens_per_step == 100


@pytest.mark.parametrize("kwargs, error, match", [
    ({"model": "not a module"}, TypeError, "`model`"),
    ({"model": lambda x: x}, TypeError, "`model`"),
    ({"example_inputs": "text"}, TypeError, "`example_inputs`"),
    ({"example_inputs": {1, 2}}, TypeError, "`example_inputs`"),
    ({"example_inputs": 3.0}, TypeError, "`example_inputs`"),
    ({"example_inputs": [1, 2, 3]}, TypeError, "`example_inputs` holds no tensor"),
    ({"example_inputs": ("token ids",)}, TypeError, "`example_inputs` holds no tensor"),
    ({"example_inputs": (torch.randn(2, 8),)}, RuntimeError, "`example_inputs`: the model's first train step"),
    ({"steps": 0}, ValueError, "`steps`"),
    ({"steps": -2}, ValueError, "`steps`"),
    ({"steps": 1.5}, ValueError, "`steps`"),
    ({"steps": True}, ValueError, "`steps`"),
    ({"warmup": -1}, ValueError, "`warmup`"),
    ({"mode": "training"}, ValueError, "`mode`"),
    ({"swap": "yes"}, ValueError, "`swap`"),
    ({"swap": 1}, ValueError, "`swap`"),
    ({"backend": "cuda"}, ValueError, "`backend`"),
    ({"loss_fn": 3}, TypeError, "`loss_fn`"),
    ({"mode": "inference", "loss_fn": lambda out: out.sum()}, ValueError, "`loss_fn`"),
    ({"optimizer": "adam"}, TypeError, "`optimizer`"),
    ({"optimizer": torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)}, ValueError, "`optimizer`"),
    ({"out": 5}, TypeError, "`out`"),
    ({"tokens": 0}, ValueError, "`tokens`"),
    ({"new_tokens": 0}, ValueError, "`new_tokens`"),
    ({"top": 0}, ValueError, "`top`"),
    ({"example_inputs": (torch.zeros(2, 8, dtype=torch.long, device="meta"),)}, ValueError, "`example_inputs`"),
])
def test_bad_arguments_name_the_argument(kwargs, error, match, decoder, ids, ceilings):
    arguments = {"model": decoder, "example_inputs": (ids,), **kwargs}
    model, inputs = arguments.pop("model"), arguments.pop("example_inputs")
    with pytest.raises(error, match=match):
        profile_model(model, inputs, ceilings=ceilings, **{**FAST, **arguments})


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_hugging_face_model_with_keyword_inputs(family, ceilings):
    transformers = pytest.importorskip("transformers")
    if family == "gpt2":
        config = transformers.GPT2Config(n_embd=16, n_head=2, n_layer=1, vocab_size=32, n_positions=16)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
                                          num_hidden_layers=1, intermediate_size=24, vocab_size=32)
        model = transformers.LlamaForCausalLM(config)
    classes = [type(m) for m in model.modules()]
    ids = torch.randint(0, 32, (2, 8))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    profile = profile_model(model, inputs, mode="train", ceilings=ceilings, **FAST)
    eager, swapped = profile["eager"], profile["swapped"]
    assert eager.tokens_per_step == 16 and eager.flops_per_step == swapped.flops_per_step > 0
    assert eager.block_share("attention") > 0 and eager.block_share("norm") > 0
    assert " -> " in swapped.swap_report and swapped.ours_share > 0
    assert [type(m) for m in model.modules()] == classes  # the caller's model as it was


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["train", "generate"])
def test_cuda_profile_attributes_kernel_time(mode, tmp_path):
    config = transformer.GPTConfig(vocab_size=256, max_seq_len=160, d_model=128, n_heads=4, n_layers=2)
    model = transformer.GPT(config, backend="torch").cuda().to(torch.bfloat16)
    ids = torch.randint(0, 256, (4, 128), device="cuda")
    inputs = (ids, ids) if mode == "train" else (ids[:, :16],)
    profile = profile_model(model, inputs, mode=mode, steps=5, warmup=2, new_tokens=8, out=str(tmp_path))
    for variant in profile.variants:
        assert sum(b["share"] for b in variant.blocks.values()) == pytest.approx(1.0, abs=1e-6)
        assert variant.profiled_time_s > 0 and variant.peak_memory_bytes > 0
        assert variant.block_share("attention") > 0 and variant.block_share("feed_forward") > 0
    swapped = profile["swapped"]
    assert swapped.ours_share > 0.1
    assert any(row["ours"] and row["block"] == "attention" for row in swapped.top)
    assert profile.environment["device"] == "cuda" and profile.ceilings["matmul_dtype"] == "bfloat16"
