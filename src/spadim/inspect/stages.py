"""Fit's stages as a user sees them: one line with its time as each stage ends, and on a terminal a
progress bar while it runs.

A stage counts its own steps where it has them (feature batches, layer subsets); a stage without
countable steps shows one step and its elapsed time, refreshed every half second, so a terminal never
looks stalled. Bars go to stderr and only when stderr is a terminal (``bars=None``), so logs and
scripts get the lines alone.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

REFRESH_S = 0.5


@dataclass
class Stage:
    """The running stage: ``advance`` its bar, ``grow`` its step count, set ``summary`` for its line."""

    name: str
    bar: tqdm
    summary: str = ""

    def advance(self, steps: int = 1) -> None:
        self.bar.update(steps)

    def grow(self, steps: int) -> None:
        self.bar.total = (self.bar.total or 0) + steps
        self.bar.refresh()


@dataclass
class Stages:
    """Runs named stages; ``seconds`` holds each finished stage's wall time under its key."""

    say: Callable[[str], None] = print
    bars: bool | None = None  # None: when stderr is a terminal
    seconds: dict[str, float] = field(default_factory=dict)
    current: Stage | None = None

    def __post_init__(self):
        if self.bars is None:
            self.bars = sys.stderr.isatty()

    @contextmanager
    def __call__(
        self, name: str, key: str | None = None, steps: int = 1, unit: str = "step"
    ) -> Iterator[Stage]:
        """One stage: yields a :class:`Stage`; on success says ``"{name}: {summary} ({seconds} s)"``."""
        bar = tqdm(total=steps, desc=name, unit=unit, leave=False, disable=not self.bars, file=sys.stderr)
        stage, done = Stage(name, bar), threading.Event()
        ticker = threading.Thread(target=_refresh, args=(bar, done), daemon=True) if self.bars else None
        if ticker:
            ticker.start()
        started = time.perf_counter()
        self.current = stage
        try:
            yield stage
        finally:
            self.current = None
            done.set()
            if ticker:
                ticker.join()
            bar.close()
        seconds = time.perf_counter() - started
        self.seconds[key or name.replace(" ", "_")] = seconds
        self.say(
            f"{name}: {stage.summary} ({seconds:.1f} s)" if stage.summary else f"{name} ({seconds:.1f} s)"
        )

    def progress(self, items: Iterable, desc: str, total_images: int) -> Iterable:
        """The extractor's progress hook: each batch advances the running stage's bar by its images."""
        stage = self.current
        if stage is None:
            yield from items
            return
        stage.grow(total_images)
        for batch in items:
            yield batch
            stage.advance(len(batch))


def _refresh(bar: tqdm, done: threading.Event) -> None:
    while not done.wait(REFRESH_S):
        bar.refresh()
