"""Peak resident memory of another process while something runs, sampled from /proc (Linux)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path


def _status_kb(pid: int, field: str) -> int:
    """One `VmRSS:`/`VmHWM:` line of /proc/<pid>/status in kB (0 where /proc is missing)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def hwm_mb(pid: int) -> float:
    """The process's lifetime peak (includes model loading and every earlier job)."""
    return _status_kb(pid, "VmHWM") / 1024


class PeakSampler:
    """Highest VmRSS seen while the block runs; sampled every `interval` s in a thread."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid, self.interval = pid, interval
        self.peak_mb = 0.0
        self.start_mb = 0.0

    @contextmanager
    def sampling(self):
        stop = threading.Event()
        self.start_mb = rss_mb(self.pid)

        def sample() -> None:
            while not stop.is_set():
                self.peak_mb = max(self.peak_mb, rss_mb(self.pid))
                stop.wait(self.interval)

        thread = threading.Thread(target=sample, daemon=True, name="rss-sampler")
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.peak_mb = max(self.peak_mb, rss_mb(self.pid))
