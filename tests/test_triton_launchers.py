"""What every Triton launcher (kernels/triton/*.py) must do around its kernels, checked on the CPU under the
interpreter: each launch runs inside a guard that makes its tensors' device current (Triton launches on the current
device, so tensors on cuda:1 would otherwise be read by a kernel on GPU 0), KERNELS_TRITON_ONE_CONFIG=1 replaces
autotuning, and the attention kernels address memory with int64 offsets wherever an index times a stride can pass
2^31 (one batch element of more than 2^31 elements)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from kernels import reference
from kernels.testing import assert_close, available_devices, backends_for
from kernels.triton import (_config, attention, attention_backward, attention_common, attention_forward, layer_norm,
                            linear, masked_softmax, residual_add)

interpreter = pytest.importorskip("triton.runtime.interpreter")
under_interpreter = pytest.mark.skipif(not _config.interpreting(), reason="reads the Triton interpreter's launches")
on_gpu = pytest.mark.skipif("cuda" not in available_devices() or "triton" not in backends_for("attention", "cuda"),
                            reason="no CUDA device or no Triton")

LAUNCHER_MODULES = (attention_common, attention_forward, attention_backward, layer_norm, linear, masked_softmax,
                    residual_add)


class _Guards:
    """Stands in for ``on_device`` in the launcher modules: records the tensor each guard was entered with, and for
    each kernel launch whether it ran inside a guard."""

    def __init__(self):
        self.devices: list[torch.device] = []
        self.depth = 0
        self.launches: list[tuple[str, bool]] = []

    @contextlib.contextmanager
    def __call__(self, tensor):
        self.devices.append(tensor.device)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1


@pytest.fixture
def guards(monkeypatch):
    recorder = _Guards()
    for module in LAUNCHER_MODULES:
        monkeypatch.setattr(module, "on_device", recorder)
    run = interpreter.InterpretedFunction.run

    def recording_run(self, *args, **kwargs):
        recorder.launches.append((self.fn.__name__, recorder.depth > 0))
        return run(self, *args, **kwargs)

    monkeypatch.setattr(interpreter.InterpretedFunction, "run", recording_run)
    return recorder


def _every_launcher():
    """One call of each launcher (forward and backward), small shapes."""
    q, k, v = (torch.randn(1, 2, 8, 16) for _ in range(3))
    out, lse = attention.attention_forward(q, k, v, None, None, 0.0, True, 0.25, None)
    attention.attention_backward(torch.randn_like(out), q, k, v, out, lse, None, None, 0.0, True, 0.25, None)
    cache = torch.randn(1, 2, 40, 16)  # two key blocks under the interpreter: split, then combined
    attention.decode_forward(q[:, :, :1], cache, cache, None, True, 0.25)
    attention.dropout_keep_mask(1, (1, 2, 4, 8), 0.5)
    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    packed = [torch.randn(8, 2, 16) for _ in range(3)]
    out_v, lse_v = attention.varlen_forward(*packed, cu, cu, 5, 5, 0.0, False, 0.25, None)
    attention.varlen_backward(torch.randn_like(out_v), *packed, out_v, lse_v, cu, cu, 5, 5, 0.0, False, 0.25, None)
    for width in (40, 1500):  # fused and looped kernels (rows past 1024 under the interpreter)
        x = torch.randn(3, width)
        y, h, mean, rstd = layer_norm.forward(x, None, torch.ones(width), torch.zeros(width), 1e-5, False)
        layer_norm.backward(torch.randn_like(y), None, x, mean, rstd, torch.ones(width), True, False)
    scores = masked_softmax.forward(torch.randn(2, 3, 5), None, 1.0, False)
    masked_softmax.backward(torch.randn_like(scores), scores, 1.0)
    residual_add.residual_add(torch.randn(10), torch.randn(10))
    seed = torch.zeros(1, dtype=torch.int64)
    out_l, pre = linear.linear_forward(torch.randn(5, 8), torch.randn(6, 8), torch.randn(6), "gelu", 0.0, seed, None,
                                       True)
    linear.linear_act_backward(torch.randn_like(out_l), None, pre, "gelu", 0.0, seed)


@under_interpreter
def test_every_launch_runs_on_its_tensors_device(guards):
    _every_launcher()
    launched = {name for name, _ in guards.launches}
    assert {"_forward_kernel", "_dkdv_kernel", "_dq_kernel", "_delta_kernel", "_combine_kernel", "_keep_mask_kernel",
            "_forward_fused_kernel", "_forward_looped_kernel", "_backward_row_sums_kernel",
            "_backward_kernel", "_residual_add_kernel", "_linear_forward_kernel",
            "_linear_act_backward_kernel"} <= launched
    unguarded = sorted({name for name, inside in guards.launches if not inside})
    assert unguarded == [], f"launched on the current device, not the tensors': {unguarded}"
    assert guards.devices and all(device == torch.device("cpu") for device in guards.devices)


def test_on_device_makes_a_cuda_tensors_device_current():
    class OnSecondGpu:
        device = torch.device("cuda", 1)

    guard = _config.on_device(OnSecondGpu())
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(_config.on_device(torch.zeros(1)), contextlib.nullcontext)


def test_one_config_switch(monkeypatch):
    monkeypatch.delenv("KERNELS_TRITON_ONE_CONFIG", raising=False)
    assert not _config.one_config()
    monkeypatch.setenv("KERNELS_TRITON_ONE_CONFIG", "1")
    assert _config.one_config()


# ----------------------------------------------------------------------------------------------------------------------
# int64 offsets in the attention kernels
# ----------------------------------------------------------------------------------------------------------------------

@pytest.fixture
def int32_offsets(monkeypatch):
    """The largest |offset| of each int32 offset array added to a pointer by the interpreted kernels."""
    found: list[int] = []
    addptr = interpreter.InterpreterBuilder.create_addptr

    def recording_addptr(self, ptr, offset):
        data = np.asarray(offset.data)
        if data.dtype == np.int32 and data.size:
            found.append(int(np.abs(data.astype(np.int64)).max()))
        return addptr(self, ptr, offset)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_addptr", recording_addptr)
    return found


@under_interpreter
@pytest.mark.parametrize("masks", [False, True])
def test_attention_addresses_with_int64_offsets(int32_offsets, masks):
    """Products of an index with a stride (h * stride_h, row * stride_row) are int64; what stays int32 is an index
    alone (a column of the head dim, a key of the padding mask, a row of lse, a tile of the block map), never larger
    than the rows there are. With (1, 2, 40, 16) tensors h * stride_h reaches 640 and row * stride_row 624, both
    past the 80 rows: an int32 product of either fails this test."""
    batch, heads, seq, dim = 1, 2, 40, 16
    q, k, v = (torch.randn(batch, heads, seq, dim) for _ in range(3))
    attn_mask = torch.rand(batch, heads, seq, seq) > 0.2 if masks else None
    padding = torch.arange(seq).expand(batch, seq) >= seq - 3 if masks else None
    out, lse = attention.attention_forward(q, k, v, attn_mask, padding, 0.0, True, 0.25, None)
    attention.attention_backward(torch.randn_like(out), q, k, v, out, lse, attn_mask, padding, 0.0, True, 0.25, None)
    attention.decode_forward(q[:, :, -2:], k, v, None, True, 0.25)
    assert int32_offsets, "no pointer arithmetic recorded"
    assert max(int32_offsets) <= batch * heads * seq, "an int32 index * stride product addresses memory"


@pytest.mark.gpu
@on_gpu
def test_gpu_heads_past_element_2_31():
    """Three heads 2^30 + 64 elements apart in one 4.3 GB buffer: the head stride fits int32, head 2 starts past
    element 2^31, so an int32 h * stride_h addresses memory 8 GB before the buffer."""
    heads, seq, dim, stride_h = 3, 128, 64, 2**30 + 64
    buffer = torch.empty(2 * stride_h + seq * dim, device="cuda", dtype=torch.bfloat16)
    q = buffer.as_strided((1, heads, seq, dim), (heads * stride_h, stride_h, dim, 1))
    q.copy_(torch.randn(1, heads, seq, dim, device="cuda"))
    k, v = (torch.randn(1, heads, seq, dim, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    out, _ = attention.attention_forward(q, k, v, None, None, 0.0, True, dim**-0.5, None)
    expected = reference.scaled_dot_product_attention(q.float(), k.float(), v.float(), None, is_causal=True)
    assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_gpu_tensors_on_the_second_device():
    torch.cuda.set_device(0)
    x = torch.randn(1 << 20, device="cuda:1")
    torch.testing.assert_close(residual_add.residual_add(x, x), 2 * x)
    q = torch.randn(1, 2, 256, 64, device="cuda:1", dtype=torch.float16)
    out, _ = attention.attention_forward(q, q, q, None, None, 0.0, False, 0.125, None)
    assert_close(out.float(), reference.scaled_dot_product_attention(q.float(), q.float(), q.float(), None),
                 atol=2e-2, rtol=2e-2)
