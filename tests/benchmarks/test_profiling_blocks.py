"""benchmarks.profiling.blocks: module and op classification, the module ranges, and the attribution of profiler
events (forward by range and name, backward through the autograd sequence numbers)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import DeviceType
from torch.autograd.profiler_util import Interval, Kernel

import transformer
from benchmarks.profiling.blocks import BLOCKS, ModuleRanges, attribute, is_ours, module_block, op_block
from benchmarks.profiling.steps import PHASES


@pytest.mark.parametrize("name, block", [
    ("kernels::attention_forward", "attention"), ("kernels::triton_attention_backward", "attention"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("ScaledDotProductFlashAttentionForCpuBackward0", "attention"),
    ("aten::_softmax", "softmax"), ("kernels::masked_softmax_forward", "softmax"), ("SoftmaxBackward0", "softmax"),
    ("aten::_log_softmax", "other"), ("LogSoftmaxBackward0", "other"), ("aten::nll_loss_forward", "other"),
    ("aten::native_layer_norm", "norm"), ("NativeLayerNormBackward0", "norm"), ("aten::_fused_rms_norm", "norm"),
    ("kernels::layer_norm_backward", "norm"), ("kernels::residual_add", "norm"),
    ("aten::linear", "feed_forward"), ("aten::addmm", "feed_forward"), ("AddmmBackward0", "feed_forward"),
    ("kernels::native_feed_forward", "feed_forward"), ("kernels::triton_matmul", "feed_forward"),
    ("aten::gelu", "feed_forward"), ("aten::silu_backward", "feed_forward"),
    ("aten::embedding", "other"), ("Optimizer.step#AdamW.step", "other"),
    ("aten::mm", None), ("aten::bmm", None), ("aten::matmul", None), ("aten::mul", None), ("aten::copy_", None),
    ("aten::baddbmm", None),
])
def test_op_block(name, block):
    assert op_block(name) == block


class HandWrittenAttention(nn.Module):
    """Attention written with bmm and softmax, as Hugging Face's eager attention is."""

    def __init__(self, width):
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = torch.bmm(q, k.transpose(1, 2)) * q.shape[-1] ** -0.5
        return torch.bmm(scores.softmax(-1), v)


class HandWrittenRMSNorm(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class TinyBlock(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.norm = HandWrittenRMSNorm(width)
        self.attn = HandWrittenAttention(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x):
        h = x + self.attn(self.norm(x))
        return h + self.mlp(h)


def test_module_block():
    assert module_block(HandWrittenAttention(4)) == "attention"
    assert module_block(nn.MultiheadAttention(4, 2)) == "attention"
    assert module_block(HandWrittenRMSNorm(4)) == "norm" and module_block(nn.LayerNorm(4)) == "norm"
    assert module_block(transformer.RMSNorm(4)) == "norm"
    assert module_block(nn.Linear(4, 4)) == "feed_forward" and module_block(transformer.FeedForward(4, 8)) == \
        "feed_forward"
    assert module_block(nn.Embedding(4, 4)) == "other"
    assert module_block(TinyBlock()) == "layer" and module_block(nn.TransformerEncoderLayer(4, 2)) == "layer"
    assert module_block(nn.Sequential()) is None and module_block(nn.Dropout()) is None


def test_is_ours():
    assert is_ours("kernels::linear_forward") and is_ours("GeneratedBackwardFor_kernels_native_linear_default")
    assert not is_ours("aten::mm") and not is_ours("attention: blocks.0.attn (MultiheadAttention)")


def _profile(model, step):
    with ModuleRanges(model) as ranges, torch.profiler.profile() as prof:
        step()
    return attribute(prof.events(), {**PHASES, **ranges.blocks}, device="cpu")


def test_attribution_by_range_name_and_backward():
    model = TinyBlock()
    x = torch.randn(2, 8, 16)

    def step():
        with torch.autograd.profiler.record_function("forward"):
            out = model(x)
        with torch.autograd.profiler.record_function("backward"):
            out.sum().backward()

    result = _profile(model, step)
    assert sum(result.block_seconds.values()) == pytest.approx(result.total_seconds)
    assert set(result.block_seconds) == set(BLOCKS)
    assert all(result.block_seconds[block] > 0 for block in ("attention", "norm", "feed_forward", "softmax"))
    # bmm says "attention" only through the range around it (and its backward through its forward op); rsqrt and
    # pow say "norm" only through theirs
    blocks = {}
    for row in attribute_rows(model, step):
        blocks.setdefault(row["name"], set()).add(row["block"])
    assert blocks["aten::bmm"] == {"attention"}
    assert blocks["aten::rsqrt"] == {"norm"} and blocks["aten::pow"] == {"norm"}
    assert blocks["aten::_softmax"] == {"softmax"}


def attribute_rows(model, step):
    """Every op's row (not only the top ones)."""
    with ModuleRanges(model) as ranges, torch.profiler.profile() as prof:
        step()
    return attribute(prof.events(), {**PHASES, **ranges.blocks}, device="cpu", top=1000).top


def test_backward_ops_follow_their_forward_op():
    """The backward of the attention's bmm runs outside every module range: the sequence number links it."""
    model = HandWrittenAttention(16)
    x = torch.randn(2, 8, 16)
    with ModuleRanges(model) as ranges, torch.profiler.profile() as prof:
        with torch.autograd.profiler.record_function("backward"):
            model(x).sum().backward()
    from benchmarks.profiling.blocks import _Walker

    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    walker = _Walker(events, {**PHASES, **ranges.blocks})
    bmm_backward = [e for e in events if e.name.endswith("BmmBackward0") and e.name.startswith("autograd::")]
    assert bmm_backward
    assert all(walker.block(e) == "attention" for e in bmm_backward)
    accumulate = [e for e in events if "AccumulateGrad" in e.name]
    assert accumulate and all(walker.block(e) == "other" for e in accumulate)


def test_ranges_come_off_after_the_context():
    config = transformer.GPTConfig(vocab_size=16, max_seq_len=8, d_model=8, n_heads=2, n_layers=1)
    model = transformer.GPT(config)
    with ModuleRanges(model) as ranges:
        assert "attend" in vars(model.blocks[0].attn)  # the package's models call attend, not forward
        assert any(name.startswith("attention: blocks.0.attn") for name in ranges.blocks)
    assert "attend" not in vars(model.blocks[0].attn)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_ranges_close_when_a_forward_raises():
    class Failing(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(4)

        def forward(self, x):
            return self.norm(x)

    model = Failing()
    with ModuleRanges(model) as ranges:
        with pytest.raises(RuntimeError):
            model(torch.randn(2, 5))  # wrong width: LayerNorm raises inside its range
        assert ranges._open == []


def test_attribution_of_a_swapped_model_finds_our_attention():
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)
    transformer.swap(layer)
    x = torch.randn(4, 128, 64)  # large enough for the kernels to outweigh the views around them

    def step():
        with torch.autograd.profiler.record_function("backward"):
            F.mse_loss(layer(x), x).backward()

    rows = attribute_rows(layer, step)
    attention = [row for row in rows if row["block"] == "attention"]
    ours = sum(row["seconds"] for row in attention if row["ours"])
    # Time is attributed to our ops (comparing it with the views that split the heads would be flaky on a loaded
    # machine: one preempted view outweighs a kernel).
    assert ours > 0
    assert {"kernels::attention_forward", "kernels::attention_backward"} <= {row["name"] for row in attention}


class FakeEvent:
    """The fields of torch.profiler's FunctionEvent that attribute() reads."""

    def __init__(self, name, *, parent=None, device=DeviceType.CPU, kernels=(), start=0.0, duration=0.0,
                 seq=-1, fwd_thread=0, self_us=0.0):
        self.name, self.cpu_parent, self.device_type, self.is_async = name, parent, device, False
        self.kernels = [Kernel(k, 0, us) for k, us in kernels]
        self.time_range = Interval(start, start + duration)
        self.sequence_nr, self.fwd_thread, self.thread = seq, fwd_thread, 1
        self.self_cpu_time_total = self_us


def test_cuda_attribution_uses_kernel_time_of_the_launching_op():
    """Kernels count for the block of the op that launched them; unlinked device time is 'other'."""
    step = FakeEvent("step")
    attention_range = FakeEvent("attention: blocks.0.attn (MultiheadAttention)", parent=step)
    ours = FakeEvent("kernels::triton_attention", parent=attention_range, kernels=[("_attn_fwd", 30.0)],
                     start=1, seq=5)
    projection = FakeEvent("aten::addmm", parent=attention_range, kernels=[("sm90_gemm", 50.0)], start=2, seq=6)
    backward = FakeEvent("autograd::engine::evaluate_function: TritonAttentionBackward", kernels=[("_attn_bwd", 60.0)],
                         start=3, seq=5, fwd_thread=1)
    device = [FakeEvent(name, device=DeviceType.CUDA, duration=us)
              for name, us in (("_attn_fwd", 30.0), ("sm90_gemm", 50.0), ("_attn_bwd", 60.0), ("memset", 10.0))]
    ranges = {**PHASES, attention_range.name: "attention"}
    result = attribute([step, attention_range, ours, projection, backward, *device], ranges, device="cuda")
    assert result.total_seconds == pytest.approx(150e-6)
    assert result.block_seconds["attention"] == pytest.approx(90e-6)  # the backward through sequence number 5
    assert result.block_seconds["feed_forward"] == pytest.approx(50e-6)
    assert result.block_seconds["other"] == pytest.approx(10e-6)  # the memset no op claimed
    rows = {row["name"]: row for row in result.top}
    assert rows["_attn_fwd"]["ours"] and rows["_attn_fwd"]["block"] == "attention"
    assert not rows["sm90_gemm"]["ours"] and not rows["_attn_bwd"]["ours"]
    assert result.ours_seconds == pytest.approx(30e-6)
