"""Loaded models by version name: each is loaded once, however many requests arrive at once."""

from __future__ import annotations

import gc
import logging
import threading
from pathlib import Path

from include.local_platform.serving.saved_model import LoadedModel

log = logging.getLogger(__name__)


class ModelCache:
    """Loaded models by version name; each is loaded once, however many requests arrive."""

    def __init__(self):
        self._models: dict[str, LoadedModel] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def peek(self, key: str) -> LoadedModel | None:
        """The model if it is loaded already (never loads: safe on the event loop)."""
        return self._models.get(key)

    def get(self, key: str, path: Path) -> LoadedModel:
        model = self._models.get(key)
        if model is not None:
            return model
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._models:
                log.info("loading SavedModel %s from %s", key, path)
                self._models[key] = LoadedModel(path)
                # A loaded model is a large, long-lived object graph: move it out of the
                # collector's view so parsing JSON (many short-lived lists) stays fast.
                gc.freeze()
            return self._models[key]

    def evict(self, key: str) -> None:
        """Forget a model and give its memory back (frozen objects are never collected otherwise)."""
        if self._models.pop(key, None) is not None:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
