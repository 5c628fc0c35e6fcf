"""benchmarks.report.write_plots: one plot per (op, mode) whatever measures its results carry."""

import os

import pytest

from benchmarks.report import write_plots
from benchmarks.runner import Result


def _result(shape, provider, ms, tflops=None, gbs=None, op="model", mode="fwd"):
    return Result(op=op, mode=mode, shape=shape, dtype="float32", device="cpu", provider=provider, status="ok",
                  median_ms=ms, tflops=tflops, gbs=gbs)


@pytest.mark.parametrize("results, label", [
    # the overhead calls: no FLOP nor byte count, only the time per call
    ([_result("call=linear", "torch", 0.004), _result("call=linear", "ours", 0.006)], "ms per call"),
    # a mode where one case has FLOPs and another has none (model inference beside generation)
    ([_result("inference", "eager", 3.8, tflops=0.12), _result("generation", "eager", 23.0)], "ms per call"),
    ([_result("inference", "eager", 3.8, tflops=0.12), _result("inference", "swapped", 3.1, tflops=0.14)], "TFLOP/s"),
    ([_result("rows", "torch", 1.0, gbs=40.0), _result("rows", "ours", 0.5, gbs=80.0)], "GB/s"),
])
def test_one_plot_per_op_and_mode_with_the_measure_every_result_has(tmp_path, monkeypatch, results, label):
    import matplotlib.axes

    labels = []
    for name in ("set_xlabel", "set_ylabel"):
        original = getattr(matplotlib.axes.Axes, name)
        monkeypatch.setattr(matplotlib.axes.Axes, name, lambda self, text, *a, _original=original, **k: (
            labels.append(text), _original(self, text, *a, **k))[1])
    paths = write_plots(str(tmp_path), results)
    assert len(paths) == 1 and os.path.getsize(paths[0]) > 0
    assert len(labels) == 1 and labels[0].startswith(label)


def test_many_cases_are_plotted_as_rows(tmp_path):
    from PIL import Image

    results = [_result(f"call=op{i} grad=False", provider, 0.004 + i * 1e-4, op="overhead")
               for i in range(28) for provider in ("torch", "ours")]
    (path,) = write_plots(str(tmp_path), results)
    width, height = Image.open(path).size
    assert height > width  # one row per call, not 28 squeezed columns
