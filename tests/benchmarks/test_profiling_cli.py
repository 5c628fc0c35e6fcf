"""``python -m benchmarks profile``: the CLI writes the record, the traces and the plot; bad choices exit with 2."""

import json

import pytest

import benchmarks.__main__ as benchmarks_main
from benchmarks.profiling import cli

TINY = ["--size", "small", "--batch", "1", "--seq-len", "8", "--steps", "1", "--warmup", "0", "--profile-steps", "1",
        "--device", "cpu", "--no-progress"]


@pytest.fixture(autouse=True)
def fixed_ceilings(monkeypatch, ceilings):
    monkeypatch.setattr(cli, "measure_ceilings", lambda device, quick=False: ceilings)


def test_profile_subcommand_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    code = benchmarks_main.main(["profile", "--model", "nn-transformer", "--mode", "inference", "--out", str(out),
                                 *TINY])
    assert code == 0
    printed = capsys.readouterr().out
    assert "feed-forward/linear" in printed and "speedup" in printed
    record = json.loads((out / "profile.json").read_text())
    assert [v["name"] for v in record["variants"]] == ["eager", "swapped"]
    assert record["model"].startswith("torch.nn decoder (small)")
    for name in ("trace-eager.json", "trace-swapped.json"):
        assert json.loads((out / name).read_text())["traceEvents"]
    assert (out / "blocks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_swap_false_and_generate(tmp_path):
    out = tmp_path / "run"
    code = cli.main(["--model", "gpt", "--mode", "generate", "--new-tokens", "2", "--swap", "false", "--out", str(out),
                     "--top", "3", *TINY])
    assert code == 0
    record = json.loads((out / "profile.json").read_text())
    assert [v["name"] for v in record["variants"]] == ["eager"]
    assert len(record["variants"][0]["top"]) == 3
    assert record["variants"][0]["tokens_per_step"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--model", "resnet"], "`model`"),
    (["--model", "hf:t5"], "hf:t5"),
    (["--model", "bert", "--mode", "generate"], "encoder"),
])
def test_bad_model_choices_exit_2(argv, message, capsys, tmp_path):
    assert cli.main([*argv, "--out", str(tmp_path), *TINY]) == 2
    assert message in capsys.readouterr().err


def test_existing_options_still_parse():
    args = benchmarks_main.parse_args(["--op", "layer_norm", "--quick"])
    assert args.op == ["layer_norm"] and args.quick
