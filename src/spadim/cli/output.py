"""The command line's output: lines on stderr, result tables on stdout, progress bars on terminals only
(CI logs stay readable). Runs and studies take it as their :class:`~spadim.run.session.Output`."""

from __future__ import annotations

import sys

from tqdm import tqdm

from spadim.run.session import Output


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def progress(items, desc: str, total_images: int):
    """tqdm over the extractor's batches, shown on terminals only."""
    return tqdm(items, desc=f"{desc} ({total_images} img)", unit="batch", disable=None, leave=False)


def bar(total: int, desc: str, unit: str) -> tqdm:
    """A bar over a study's steps, shown on terminals only."""
    return tqdm(total=total, desc=desc, unit=unit, disable=None)


TERMINAL = Output(say=say, show=print, progress=progress, bar=bar)
