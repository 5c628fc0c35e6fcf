"""DistributedDataParallel over a swapped model: 2 CPU processes (gloo) train it and end with the same parameters as
one process training the unswapped torch.nn model on the whole batch."""

import copy
import datetime
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import transformer

D, H, FF, STEPS = 16, 2, 24, 3


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.TransformerEncoder(nn.TransformerEncoderLayer(D, H, FF, dropout=0.0, batch_first=True), 2,
                              enable_nested_tensor=False),
        nn.LayerNorm(D), nn.Linear(D, 1)).double()


def _data():
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(4, 5, D, generator=generator, dtype=torch.float64) for _ in range(STEPS)]


def _train(model, batches):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x in batches:
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
    return model


def _worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # A timeout, so that a rank failing alone ends the test instead of leaving the other waiting in a collective.
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=120))
    model = _model()
    report = transformer.swap(model)
    ddp = nn.parallel.DistributedDataParallel(model)
    _train(ddp, [x[rank * 2:(rank + 1) * 2] for x in _data()])  # each rank: its half of every batch
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.save({"swapped": len(report.swapped), "parameters": state}, os.path.join(out_dir, f"rank{rank}.pt"))
    # Leave without tearing the process group down: torch's gloo teardown can deadlock on the GIL (the destructor
    # joins gloo's thread while that thread waits for the GIL to free a tensor); the results are on disk.
    os._exit(0)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_trains_a_swapped_model_like_one_process(tmp_path):
    expected = {n: p.detach() for n, p in _train(copy.deepcopy(_model()), _data()).named_parameters()}
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["swapped"] for r in ranks] == [10, 10]  # 2 x (layer, attention, 2 norms), the stack, the final norm
    for name, value in expected.items():
        assert torch.equal(ranks[0]["parameters"][name], ranks[1]["parameters"][name]), f"{name} differs by rank"
        torch.testing.assert_close(ranks[0]["parameters"][name], value, msg=f"{name} differs from one process")
