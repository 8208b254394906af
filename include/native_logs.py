"""Keep TensorFlow's native start-up banner out of stderr.

While `tensorflow` is imported its C++ core writes a few lines straight to file
descriptor 2 (absl's "All log messages before absl::InitializeLog() is called are
written to STDERR" and the oneDNN notice), whatever `TF_CPP_MIN_LOG_LEVEL` says.
Airflow logs every stderr line of a task at ERROR level, so each task that trained
or exported showed red "errors" that were none. `install()` (called by the
`include` package) wraps the first import of `tensorflow`: what the import writes
to fd 2 is captured; the banner lines go to `logging` at DEBUG and everything else
is written back to stderr as it was, so nothing is lost and an ERROR line means an error.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

log = logging.getLogger(__name__)
#: Lines TensorFlow prints on every import: informational, not worth a user's attention.
BANNER = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|I0000 |"
                    r"To enable the following instructions)")


@contextlib.contextmanager
def capture_native_stderr() -> Iterator[None]:
    """Send fd 2 to a temporary file for the block; then log the banner, and pass the rest on to stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().splitlines(keepends=True):
                text = line.decode(errors="replace")
                if BANNER.match(text):
                    log.debug("%s", text.rstrip())
                else:
                    os.write(2, line)


class _QuietLoader(importlib.abc.Loader):
    """The real loader of `tensorflow`, run with fd 2 captured; it puts itself back afterwards."""

    def __init__(self, spec: importlib.machinery.ModuleSpec) -> None:
        self._spec, self._loader = spec, spec.loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        try:
            with capture_native_stderr():
                self._loader.exec_module(module)
        finally:
            self._spec.loader = module.__loader__ = self._loader


class _TensorflowImportFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: later imports find the module in sys.modules
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec)
        return spec


def install() -> None:
    """Quiet the first `import tensorflow` of this process (no-op once TensorFlow is loaded)."""
    if "tensorflow" in sys.modules or any(isinstance(f, _TensorflowImportFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TensorflowImportFinder())
