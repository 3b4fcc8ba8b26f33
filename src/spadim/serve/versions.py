"""Serving the version in force: a model file replaced by ``spadim update`` or ``rollback`` (or the
page's update button) is loaded in the background and swapped in between requests; requests already
running finish on the version they started with, so none is dropped."""

from __future__ import annotations

import threading

from spadim.inspect import Inspector


class ModelSlots:
    """The inspectors a server answers with, each watched for a new version of its file."""

    def __init__(self, inspectors: dict[str, Inspector]):
        self.current = dict(inspectors)
        self._stamps = {name: inspector.file_stamp() for name, inspector in inspectors.items()}
        self._loading: set[str] = set()
        self._guard = threading.Lock()
        self.errors: dict[str, str] = {}

    def __getitem__(self, name: str) -> Inspector:
        self._check(name)
        return self.current[name]

    def __contains__(self, name: str) -> bool:
        return name in self.current

    def __iter__(self):
        return iter(self.current)

    def items(self):
        return self.current.items()

    def _watched(self, name: str) -> bool:
        inspector = self.current[name]
        return inspector.runtime == "torch" and not inspector.concurrent and inspector.model_path is not None

    def _check(self, name: str) -> None:
        if name not in self.current or not self._watched(name):
            return
        stamp = self.current[name].file_stamp()
        with self._guard:
            if stamp is None or stamp == self._stamps.get(name) or name in self._loading:
                return
            self._loading.add(name)
        threading.Thread(target=self._load, args=(name, stamp), daemon=True).start()

    def _load(self, name: str, stamp) -> None:
        try:
            self.swap(name, self.current[name].reloaded(), stamp)
        except Exception as exc:  # noqa: BLE001 - a half-written or foreign file: keep serving the old one
            self.errors[name] = f"{type(exc).__name__}: {exc}"
        finally:
            with self._guard:
                self._loading.discard(name)

    def swap(self, name: str, inspector: Inspector, stamp=None) -> None:
        with self._guard:
            self.current[name] = inspector
            self._stamps[name] = stamp if stamp is not None else inspector.file_stamp()
            self.errors.pop(name, None)

    def reload_now(self, name: str) -> Inspector:
        """Load the file in force and swap it in before returning (after an update made here)."""
        inspector = self.current[name].reloaded()
        self.swap(name, inspector)
        return inspector
