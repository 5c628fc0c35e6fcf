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


def _worker(rank, world_size, port, expected):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # A timeout, so that a rank failing alone ends the test instead of leaving the other waiting in a collective.
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=120))
    try:
        model = _model()
        report = transformer.swap(model)
        ddp = nn.parallel.DistributedDataParallel(model)
        _train(ddp, [x[rank * 2:(rank + 1) * 2] for x in _data()])  # each rank: its half of every batch
        errors = [] if len(report.swapped) == 10 else [str(report)]  # 2 x (layer, attention, 2 norms), stack, norm
        for name, param in model.named_parameters():  # every rank runs every collective; asserts come after
            gathered = [torch.empty_like(param) for _ in range(world_size)]
            dist.all_gather(gathered, param.detach().contiguous())
            if not torch.equal(gathered[0], gathered[1]):
                errors.append(f"{name} differs between ranks")
            if not torch.allclose(param.detach(), expected[name], rtol=1e-7, atol=1e-9):
                errors.append(f"{name} differs from one process training on the whole batch")
        assert not errors, errors
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_trains_a_swapped_model_like_one_process():
    expected = {n: p.detach() for n, p in _train(copy.deepcopy(_model()), _data()).named_parameters()}
    mp.spawn(_worker, args=(2, _free_port(), expected), nprocs=2, join=True)
