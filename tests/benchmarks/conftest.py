"""Fixtures of the profiling tests: a tiny torch.nn decoder, its token ids, and fixed ceilings (measuring them takes
seconds; the tests check the arithmetic, not the machine)."""

import pytest
import torch

from benchmarks.ceilings import Ceilings
from benchmarks.ops.model import NNDecoder

VOCAB, WIDTH, HEADS, LAYERS, POSITIONS = 32, 16, 2, 1, 16


@pytest.fixture
def ceilings():
    return Ceilings(bandwidth_gbs=20.0, matmul_tflops=0.1, matmul_dtype="float32", copy_bytes=1, matmul_size=1)


@pytest.fixture
def decoder():
    """A GPT-style decoder of torch.nn modules (nn.TransformerEncoder, causal), one layer of width 16."""
    return NNDecoder(VOCAB, WIDTH, HEADS, LAYERS, POSITIONS)


@pytest.fixture
def ids():
    return torch.randint(0, VOCAB, (2, 8))  # (B, S)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on one thread: OpenMP's wake-ups on a loaded 2-core machine cost more than the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
