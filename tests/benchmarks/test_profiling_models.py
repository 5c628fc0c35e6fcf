"""benchmarks.profiling.models: every CLI model builds from its config and runs its mode's inputs."""

import pytest
import torch

from benchmarks.profiling import models
from benchmarks.profiling.steps import default_loss, make_step


def _run(built, mode):
    optimizer = torch.optim.SGD(built.model.parameters(), lr=0.0) if mode == "train" else None
    built.model.train(mode == "train")
    inputs = (tuple(built.inputs), {}) if not isinstance(built.inputs, dict) else ((), built.inputs)
    return make_step(built.model, inputs, mode, loss_fn=built.loss_fn, optimizer=optimizer, new_tokens=2)()


@pytest.mark.parametrize("name", [*models.MODELS, "hf:gpt2", "hf:bert", "hf:llama"])
@pytest.mark.parametrize("mode", ["train", "inference", "generate"])
def test_builds_and_runs(name, mode):
    if mode == "generate" and name in ("bert", "hf:bert"):
        with pytest.raises(ValueError, match="encoder"):
            models.build(name, "small", mode, batch=1, seq_len=6, new_tokens=2)
        return
    if name.startswith("hf:"):
        pytest.importorskip("transformers")
    built = models.build(name, "small", mode, batch=2, seq_len=6, new_tokens=2)
    result = _run(built, mode)
    if mode == "train":
        assert result.dim() == 0 and torch.isfinite(result)
    elif mode == "generate":
        assert result.shape[0] == 2 and result.shape[1] in (1 + 2, 6 + 2)  # seq2seq: BOS + new tokens
    assert built.label


def test_train_inputs_give_the_models_own_loss():
    built = models.build("gpt", "small", "train", batch=1, seq_len=4, new_tokens=1)
    output = built.model(*built.inputs)
    assert default_loss(output) is output[1]


def test_dtype_and_size_checks():
    built = models.build("nn-transformer", "small", "inference", batch=1, seq_len=4, new_tokens=1,
                         dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in built.model.parameters())
    with pytest.raises(ValueError, match="`size`"):
        models.build("gpt", "large", "train", batch=1, seq_len=4, new_tokens=1)
