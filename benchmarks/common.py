"""Shared plumbing of the benchmark cases: generated data, settings, stage clocks, peak memory, and
the fresh child process each case runs in (so its timings and peak memory are its own)."""

from __future__ import annotations

import multiprocessing as mp
import resource
import sys
import time
import traceback
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
CLASS = "nut"
GIB = 1024**3
METHODS = ("spade", "padim", "patchcore")
CASES = ("backbone", "methods", "growth", "large", "sweep", "calibration", "stream", "serve")


def _split(n_test: int) -> tuple[int, int]:
    """(good, per-defect-type) counts: about half good, two defect types; at least one each."""
    per_defect = max(1, n_test // 4)
    return max(1, n_test - 2 * per_defect), per_defect


def _generate(root: Path, n_train: int, n_test: int, size: int) -> Path:
    """A cached synthetic class (make_dataset is a no-op when its marker matches)."""
    from spadim.data.embedded.dataset import make_dataset

    good, per_defect = _split(n_test)
    folder = root / f"{CLASS}-n{n_train}-g{good}-d{per_defect}-s{size}"
    make_dataset(
        folder,
        classes=(CLASS,),
        n_train=n_train,
        n_test_good=good,
        n_test_defect=per_defect,
        size=size,
        seed=0,
    )
    return folder / CLASS


def _link(dst: Path, train: Path, test_class: Path, n_train: int | None = None) -> Path:
    """Class folder ``dst`` of symlinks: the first ``n_train`` of ``train`` and the test set of
    ``test_class`` (so that runs compared with each other share their images)."""
    from spadim.data.mvtec import list_images

    stamp = f"{train.resolve()}|{test_class.resolve()}|{n_train}"
    marker = dst / ".bench-links"
    if marker.is_file() and marker.read_text() == stamp:
        return dst
    if dst.exists():
        for p in sorted(dst.rglob("*"), key=lambda p: -len(p.parts)):
            p.unlink() if p.is_symlink() or p.is_file() else p.rmdir()
    (dst / "train" / "good").mkdir(parents=True)
    for img in list_images(train / "train" / "good")[:n_train]:
        (dst / "train" / "good" / img.name).symlink_to(img.resolve())
    for sub in ("test", "ground_truth"):
        (dst / sub).symlink_to((test_class / sub).resolve(), target_is_directory=True)
    marker.write_text(stamp)
    return dst


def _many(dst: Path, sources: list[Path], n: int) -> list[Path]:
    """``n`` distinct paths (symlinks ``00000_<name>``, ...) cycling over ``sources``, made once."""
    names = [f"{i:05d}_{sources[i % len(sources)].name}" for i in range(n)]
    stamp = "|".join(str(p.resolve()) for p in sources) + f"|{n}"
    marker = dst / ".bench-links"
    if not (marker.is_file() and marker.read_text() == stamp):
        if dst.exists():
            for p in dst.iterdir():
                p.unlink()
        dst.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            (dst / name).symlink_to(sources[i % len(sources)].resolve())
        marker.write_text(stamp)
    return [dst / name for name in names]


# ---------------------------------------------------------------- child processes


def _settings(cfg: dict, layers=(1, 2, 3)):
    from spadim.features.config import BackboneConfig
    from spadim.run.pipeline import Settings

    backbone = BackboneConfig(
        arch=cfg["arch"],
        weights=cfg["weights"],
        resize=cfg["resize"],
        crop=cfg["crop"],
        batch_size=cfg["batch_size"],
    )
    return Settings(backbone=backbone, layers=tuple(layers))


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # KiB on Linux


class _Clock:
    """Seconds and image counts accumulated per label."""

    def __init__(self):
        self.s: dict[str, float] = {}
        self.n: dict[str, int] = {}

    def add(self, label: str, seconds: float, n: int = 0) -> None:
        self.s[label] = self.s.get(label, 0.0) + seconds
        self.n[label] = self.n.get(label, 0) + n


def _phase(desc: str) -> str:
    return "backbone train" if desc.endswith("train") else "backbone test"


class _TimedExtractor:
    """A FeatureExtractor whose calls and streamed chunks are timed as backbone train/test."""

    def __init__(self, fx, clock: _Clock):
        self._fx, self._clock = fx, clock

    def __getattr__(self, name):
        return getattr(self._fx, name)

    def __call__(self, paths, desc: str = "features"):
        t0 = time.perf_counter()
        fs = self._fx(paths, desc)
        self._clock.add(_phase(desc), time.perf_counter() - t0, len(paths))
        return fs

    def stream(self, paths, size: int, desc: str = "features"):
        chunks = iter(self._fx.stream(paths, size, desc))
        while True:
            t0 = time.perf_counter()
            chunk = next(chunks, None)
            if chunk is None:
                return
            self._clock.add(_phase(desc), time.perf_counter() - t0, len(chunk))
            yield chunk


class _TimedMethod:
    """A method whose fit stages (fit, partial_fit, finish_fit) and score calls are timed."""

    STAGES = {"fit": "fit", "partial_fit": "fit", "finish_fit": "fit", "score": "score"}

    def __init__(self, method, clock: _Clock):
        self._m, self._clock = method, clock

    def __getattr__(self, name):
        attr = getattr(self._m, name)
        if name not in self.STAGES:
            return attr

        def timed(*args, **kwargs):
            n = len(args[0]) if args and hasattr(args[0], "__len__") else 0
            if name == "score" and n > 1 and "score one" not in self._clock.n:
                for _ in range(3):  # one image alone, as a single request scores it
                    t0 = time.perf_counter()
                    attr(args[0].rows(0, 1), *args[1:], **kwargs)
                    self._clock.add("score one", time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            out = attr(*args, **kwargs)
            self._clock.add(self.STAGES[name], time.perf_counter() - t0, n)
            return self if out is self._m else out

        return timed


def _current_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / GIB
    return float("nan")


def _entry(conn, target, args) -> None:
    try:
        out = target(*args)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which carries on
        out = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    conn.send(out)
    conn.close()


def _child(target, *args) -> dict:
    """Run ``target(*args)`` in a fresh process; its result, or {"error": ...}.

    The forkserver context is used because a spawned or forked child inherits the parent's
    resident size in ``ru_maxrss``; a child of the (small) fork server does not.
    """
    ctx = mp.get_context("forkserver")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_entry, args=(send, target, args))
    p.start()
    send.close()
    try:
        out = recv.recv()
    except EOFError:
        out = None
    p.join()
    if out is None:
        out = {"error": f"process died with exit code {p.exitcode} (killed for memory?)"}
    if "error" in out:
        print(f"!!! {target.__name__.strip('_')}: {out['error']}", file=sys.stderr)
        if "traceback" in out:
            print(out["traceback"], file=sys.stderr)
    return out


# ---------------------------------------------------------------- report


def _stage(msg: str, t0: float) -> None:
    print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)
