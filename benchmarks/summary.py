"""``python -m benchmarks.summary RECORD.json``: the short table of a record (op, provider, shape, time, throughput,
fraction of ceiling, ratio to the best peer), e.g. the last thing gpu_check.sh prints."""

from __future__ import annotations

import json
import sys

from .ceilings import Ceilings
from .report import ceilings_line, terminal_table
from .runner import Result


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as handle:
        record = json.load(handle)
    results = [Result(**r) for r in record["results"]]
    print(ceilings_line(Ceilings(**record["ceilings"]), record["environment"]))
    print(terminal_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
