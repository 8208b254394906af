"""The beam engine's background upload: every byte in order, the handle closed once, an upload error raised."""

from __future__ import annotations

import io

import pytest

from include.local_platform.workers.beam_engine import BackgroundUpload


class Handle(io.BytesIO):
    """A file handle that keeps what it was given after close, and fails its write number `fail_at`."""

    def __init__(self, fail_at: int = 0):
        super().__init__()
        self.fail_at, self.writes, self.kept, self.closes = fail_at, 0, b"", 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes == self.fail_at:
            raise OSError("upload refused: 503")
        self.kept += data
        return len(data)

    def close(self) -> None:
        self.closes += 1


def test_every_byte_arrives_in_order_in_pieces(monkeypatch):
    monkeypatch.setattr(BackgroundUpload, "PIECE_BYTES", 1000)
    handle = Handle()
    upload = BackgroundUpload(handle)
    lines = [b"%d,%s\n" % (n, b"x" * (n % 97)) for n in range(5000)]
    for line in lines:
        assert upload.write(line) == len(line)
    upload.close()
    assert handle.kept == b"".join(lines) and handle.closes == 1
    assert 1 < handle.writes < len(lines)  # pieces, not line by line


def test_an_upload_error_is_raised_to_the_writer_and_nothing_hangs(monkeypatch):
    monkeypatch.setattr(BackgroundUpload, "PIECE_BYTES", 100)
    upload = BackgroundUpload(Handle(fail_at=2))
    with pytest.raises(OSError, match="upload refused"):
        for _ in range(10_000):  # the writer learns of the failure at a later write (or at close)
            upload.write(b"y" * 50)
        upload.close()
