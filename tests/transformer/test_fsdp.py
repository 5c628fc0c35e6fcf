"""FSDP2 (``torch.distributed.fsdp.fully_shard``) over a swapped model: 2 CPU processes (gloo), each layer and the
root sharded, train it on halves of every batch and match one process training the unswapped torch.nn model on the
whole batch: the same loss at every step and the same parameters at the end, within tolerance. The GPU tier runs
the same with nccl on one GPU (world size 1)."""

import copy
import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import transformer

D, H, FF, STEPS, BATCH = 16, 2, 24, 3, 4

fsdp = pytest.importorskip("torch.distributed.fsdp", reason="torch without torch.distributed.fsdp")
if not hasattr(fsdp, "fully_shard"):
    pytest.skip(f"torch {torch.__version__} has no torch.distributed.fsdp.fully_shard (FSDP2)", allow_module_level=True)


def _model(dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.TransformerEncoder(nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True), 2,
                              enable_nested_tensor=False),
        nn.LayerNorm(D), nn.Linear(D, 1)).to(dtype)


def _data(dtype=torch.float64):
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(BATCH, 5, D, generator=generator, dtype=torch.float64).to(dtype) for _ in range(STEPS)]


def _train(model, batches, device="cpu", reduce_loss=None):
    """SGD on the mean squared output; returns the loss of every step (averaged over ranks by ``reduce_loss``)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for x in batches:
        optimizer.zero_grad()
        loss = model(x.to(device)).pow(2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach() if reduce_loss is None else reduce_loss(loss.detach()))
    return torch.stack(losses).cpu()


def _worker(rank, world_size, port, out_dir, backend, device_type, dtype):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
    if device_type == "cuda":
        torch.cuda.set_device(device)
    # A timeout, so that a rank failing alone ends the test instead of leaving the other waiting in a collective.
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=120))
    try:
        model = _model(dtype).to(device)
        report = transformer.swap(model)
        mesh = torch.distributed.device_mesh.init_device_mesh(device_type, (world_size,))
        for layer in model[0].layers:
            fsdp.fully_shard(layer, mesh=mesh)
        fsdp.fully_shard(model, mesh=mesh)

        def mean_over_ranks(loss):
            dist.all_reduce(loss)
            return loss / world_size

        share = BATCH // world_size
        losses = _train(model, [x[rank * share:(rank + 1) * share] for x in _data(dtype)], device, mean_over_ranks)
        # full_tensor(): the DTensor shards of every rank gathered
        state = {n: p.full_tensor().detach().cpu().double() for n, p in model.named_parameters()}
        result = {"swapped": len(report.swapped), "losses": losses, "parameters": state,
                  "sharded": all(isinstance(p, torch.distributed.tensor.DTensor) for p in model.parameters())}
    except Exception as error:  # noqa: BLE001  (reported by the test, with the rank)
        result = {"error": f"{type(error).__name__}: {error}"}
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    # Leave without tearing the process group down: torch's gloo teardown can deadlock on the GIL (see test_ddp.py).
    os._exit(0)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_sharded(tmp_path, world_size, backend, device_type, dtype=torch.float64):
    mp.spawn(_worker, args=(world_size, _free_port(), str(tmp_path), backend, device_type, dtype),
             nprocs=world_size, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]
    for rank, result in enumerate(ranks):
        assert "error" not in result, f"rank {rank}: {result['error']}"
    return ranks


def _check_against_one_process(ranks, **tolerance):
    """Against one unswapped, unsharded process in fp64 on the CPU; ``tolerance``: assert_close's atol/rtol."""
    model = _model()
    expected_losses = _train(model, _data())
    for rank, result in enumerate(ranks):
        assert result["sharded"], f"rank {rank}: parameters are not DTensors, fully_shard did not shard"
        assert result["swapped"] == 10  # 2 x (layer, attention, 2 norms), the stack, the final norm
        torch.testing.assert_close(result["losses"].double(), expected_losses, msg=f"rank {rank}: losses differ",
                                   **tolerance)
        for name, value in model.named_parameters():
            torch.testing.assert_close(result["parameters"][name], value.detach(),
                                       msg=f"rank {rank}: {name} differs from one process", **tolerance)


def test_fsdp2_trains_a_swapped_model_like_one_process_gloo_cpu(tmp_path):
    _check_against_one_process(_run_sharded(tmp_path, 2, "gloo", "cpu"))


@pytest.mark.gpu
def test_fsdp2_trains_a_swapped_model_like_one_process_nccl_gpu(tmp_path):
    """fp32 on the GPU, so that the fused kernels serve it (fp64 falls back to torch there); TF32 dots allowed for."""
    _check_against_one_process(_run_sharded(tmp_path, 1, "nccl", "cuda", torch.float32), atol=2e-3, rtol=2e-3)
