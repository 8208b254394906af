"""Loaded models by version name: loaded on first use, once however many requests arrive, within a memory cap.

A model's weight is its SavedModel's size on disk (variables and graph, what loading
brings into memory). When the loaded models weigh more than ``ML_ENGINE_MODEL_CACHE_BYTES``
(default 4 GiB), the least recently used ones are unloaded; the next request for one loads
it again from the version's local artifacts (about a second for the heatmap model, most of
it TensorFlow restoring the graph). The model just loaded is never the one unloaded.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

from include.local_platform.serving.saved_model import LoadedModel

log = logging.getLogger(__name__)
DEFAULT_CAP_BYTES = 4 * 1024**3


def weight(path: Path) -> int:
    """Bytes of a SavedModel directory (its files, recursively)."""
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


class ModelCache:
    """Loaded models by version name, least recently used out first once their weight passes the cap."""

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = max_bytes if max_bytes is not None else int(
            os.environ.get("ML_ENGINE_MODEL_CACHE_BYTES", str(DEFAULT_CAP_BYTES)))
        self._models: OrderedDict[str, tuple[LoadedModel, int]] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def peek(self, key: str) -> LoadedModel | None:
        """The model if it is loaded already (never loads: safe on the event loop)."""
        entry = self._models.get(key)
        if entry is None:
            return None
        with self._guard:
            if key in self._models:
                self._models.move_to_end(key)
        return entry[0]

    def get(self, key: str, path: Path) -> LoadedModel:
        """The loaded model, loading it from ``path`` on first use (one loader per model at a time)."""
        if (model := self.peek(key)) is not None:
            return model
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if (model := self.peek(key)) is not None:
                return model
            log.info("loading SavedModel %s from %s", key, path)
            model = LoadedModel(path)
            with self._guard:
                self._models[key] = (model, weight(path))
            # A loaded model is a large, long-lived object graph: move it out of the
            # collector's view so parsing JSON (many short-lived lists) stays fast.
            gc.freeze()
            self._trim(keep=key)
            return model

    def loaded(self) -> list[str]:
        """Loaded version names, least recently used first."""
        with self._guard:
            return list(self._models)

    def _trim(self, keep: str) -> None:
        """Unload least recently used models until the rest fit the cap (``keep`` stays)."""
        unloaded = []
        with self._guard:
            while sum(size for _, size in self._models.values()) > self.max_bytes and len(self._models) > 1:
                oldest = next(name for name in self._models if name != keep)
                unloaded.append((oldest, self._models.pop(oldest)[1]))
        for name, size in unloaded:
            log.info("unloaded SavedModel %s (%d bytes; loaded models over ML_ENGINE_MODEL_CACHE_BYTES=%d); it "
                     "loads again on its next request", name, size, self.max_bytes)
        if unloaded:
            self._release()

    def evict(self, key: str) -> None:
        """Forget a model and give its memory back (frozen objects are never collected otherwise)."""
        with self._guard:
            found = self._models.pop(key, None)
        if found is not None:
            self._release()

    @staticmethod
    def _release() -> None:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
