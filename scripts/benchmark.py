"""``make bench``: the benchmark package (``benchmarks/``, one module per case, the targets in
``benchmarks/targets.py``) run from the command line; ``python scripts/benchmark.py -h`` lists the options."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root holds benchmarks/

from benchmarks.run import main  # noqa: E402

if __name__ == "__main__":
    main()
