"""benchmarks.ceilings: best-of-repeats ceilings over several sizes with the run's thread count, and fractions above
100% flagged as a wrong ceiling wherever they are shown."""

import glob
import json
import os
import time

import pytest
import torch

from benchmarks import ceilings as ceilings_module
from benchmarks.ceilings import Ceilings, exceeds_ceiling, fraction_text, measure_ceilings
from benchmarks.report import ceilings_line, terminal_table, write_markdown
from benchmarks.runner import Result

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {"device_name": "test cpu", "threads": 2, "torch": "x", "triton": "y", "git_commit": "0123456789abcdef"}


def test_best_seconds_is_the_fastest_call_not_a_typical_one():
    delays = iter([0.0, 0.03, 0.002, 0.03, 0.03, 0.03])  # warm-up, then one quick call among slow ones

    def call():
        time.sleep(next(delays))

    best = ceilings_module._best_seconds(call, torch.device("cpu"), repeats=5, budget_s=10.0)
    assert 0.002 <= best < 0.02


@pytest.mark.parametrize("threads", [1, 2])
def test_measured_with_the_run_thread_count_over_several_sizes(monkeypatch, threads):
    monkeypatch.setitem(ceilings_module._MATMUL_SIZES, ("cpu", True), (32, 64, 96))
    monkeypatch.setitem(ceilings_module._COPY_MIB, ("cpu", True), 1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = measure_ceilings(torch.device("cpu"), quick=True, repeats=3)
    finally:
        torch.set_num_threads(before)
    assert result.threads == threads
    assert set(result.matmul_tflops_by_size) == {"32", "64", "96"}
    assert result.matmul_tflops == max(result.matmul_tflops_by_size.values()) > 0
    assert result.matmul_tflops_by_size[str(result.matmul_size)] == result.matmul_tflops
    assert result.bandwidth_gbs > 0 and result.copy_bytes == 1024 * 1024 and result.matmul_dtype == "float32"
    assert result.statistic == "best"
    assert f"({threads} threads)" in ceilings_line(result, ENV) and "best of the calls" in ceilings_line(result, ENV)


def test_fraction_text_flags_anything_above_100_percent():
    assert fraction_text(None) == "-"
    assert fraction_text(0.873) == "87.3%"
    assert fraction_text(1.0) == "100.0%"
    assert fraction_text(2.19) == "219.0% (!)"
    assert exceeds_ceiling(1.0001) and not exceeds_ceiling(1.0) and not exceeds_ceiling(None)


def _result(fraction):
    return Result("attention", "fwd", "(1, 2, 3, 4)", "float32", "cpu", "native", "ok", median_ms=1.0, tflops=0.2,
                  fraction_of_ceiling=fraction)


def test_tables_warn_when_a_result_exceeds_the_ceiling(tmp_path):
    ceilings = Ceilings(23.0, 0.1, "float32", 1 << 20, 2048, threads=2)
    assert "(!)" not in terminal_table([_result(0.9)]) and "ceiling is wrong" not in terminal_table([_result(0.9)])
    table = terminal_table([_result(0.9), _result(2.19)])
    assert "219.0% (!)" in table and "the ceiling is wrong" in table and "up to 219%" in table
    path = write_markdown(str(tmp_path), [_result(2.19)], ceilings, ENV)
    with open(path) as handle:
        assert "the ceiling is wrong" in handle.read()


def test_records_written_before_the_new_fields_still_load():
    paths = glob.glob(os.path.join(ROOT, "benchmarks", "results", "*", "record.json"))
    assert paths, "no committed record to load"
    for path in paths:
        with open(path) as handle:
            ceilings = Ceilings(**json.load(handle)["ceilings"])
        assert ceilings.matmul_tflops > 0 and ceilings.bandwidth_gbs > 0
        assert ceilings.statistic in ("median", "best")
