"""Soak: a small GPT on the native CPU kernels, dropout on, trained 200 steps (the 1000-step run is
``python -m benchmarks.soak``, figures in benchmarks/NOTES.md): memory flat, loss finite, and a mid-run checkpoint
(model, optimizer, torch's generator) resumed in a fresh model reproduces the next 20 steps bit for bit. On one
thread, as every test here (tests/benchmarks/conftest.py): OpenMP threads spinning on a loaded 2-core machine made a
step of this model 7x slower."""

import pytest
import torch

import kernels
from benchmarks import soak

pytestmark = pytest.mark.skipif(not kernels._extension.native_available("cpu"), reason="kernels._C is not built")


@pytest.mark.slow
def test_200_steps_flat_memory_finite_loss_and_a_bit_exact_resume():
    result = soak.soak(200, rss_from=50, checkpoint_at=100, resumed=20)
    assert result.all_finite, [loss for loss in result.losses if not loss == loss]
    assert sum(result.losses[-20:]) < 0.7 * sum(result.losses[:20])  # it learns (with dropout on)
    assert result.rss_growth < 0.02, result.summary()
    assert result.resumed_losses_equal and result.resumed_parameters_equal, result.summary()


def test_the_checkpoint_restores_the_dropout_generator():
    """Negative control: a checkpoint without torch's generator state does not replay the dropout masks."""
    torch.manual_seed(0)
    model, optimizer = soak.new_run()
    soak.train_step(model, optimizer, 1)
    checkpoint = soak.save_checkpoint(model, optimizer, 1)
    expected = soak.train_step(model, optimizer, 2)

    resumed_model, resumed_optimizer, step = soak.load_checkpoint(checkpoint)
    assert soak.train_step(resumed_model, resumed_optimizer, step + 1) == expected

    resumed_model, resumed_optimizer, step = soak.load_checkpoint(checkpoint)
    torch.manual_seed(123)  # as if the generator state had not been saved
    assert soak.train_step(resumed_model, resumed_optimizer, step + 1) != expected


def test_bad_step_numbers_name_the_arguments():
    with pytest.raises(ValueError, match="checkpoint_at"):
        soak.soak(10, rss_from=2, checkpoint_at=5, resumed=20)
    with pytest.raises(ValueError, match="rss_from"):
        soak.soak(10, rss_from=10, checkpoint_at=2, resumed=2)
