"""Keras callbacks that report through `logging`, so progress shows in Airflow task logs."""

from __future__ import annotations

import logging
import time

import keras

log = logging.getLogger(__name__)


class EpochLogger(keras.callbacks.Callback):
    """One log line per epoch with every loss and metric, instead of Keras' progress bar."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = " ".join(f"{name}={float(value):.4f}" for name, value in sorted((logs or {}).items()))
        log.info("Epoch %s/%s (%.1f s): %s", epoch + 1, self.epochs, time.monotonic() - self._started, values)
