"""The examples in examples/ (the README points users at them) run to the end on the CPU with small settings and
print what they promise: the swap report, the equality with the original model, the timings, a sample."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {
    "swap_nn_transformer.py": (["--repeats", "1"], ["same parameter objects: True", "training step", "swapped"]),
    # (whether the greedy tokens agree is printed, not asserted: a near-tie of two random logits may flip)
    "swap_hugging_face.py": (["--repeats", "1", "--new-tokens", "2"], ["max |logits swapped - sdpa|",
                                                                        "after unswap: attention 'sdpa'"]),
    "train_gpt.py": (["--steps", "2", "--batch", "2", "--context", "16"], ["step    1", "sample:"]),
    "train_seq2seq.py": (["--steps", "2", "--batch", "4"], ["step    1", "sequence accuracy"]),
}


@pytest.mark.parametrize("script", sorted(SMALL))
def test_example_runs_and_reports(script):
    if script == "swap_hugging_face.py":
        pytest.importorskip("transformers")
    arguments, expected = SMALL[script]
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), "--device", "cpu", *arguments],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for line in expected:
        assert line in result.stdout, result.stdout[-3000:]
    assert "backend 'auto' on cpu" in result.stdout


def test_every_example_is_covered():
    scripts = {name for name in os.listdir(os.path.join(ROOT, "examples")) if name.endswith(".py")
               and not name.startswith("_")}
    assert scripts == set(SMALL)
