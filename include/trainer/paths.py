"""Object names become local paths only through `safe_join`.

GCS object names are arbitrary strings: `prefix//tmp/x` (an empty segment, so the
rest reads as an absolute path), `a/../../x`, or a NUL byte are all valid names on
real GCS. Written to disk unchecked they land outside the staging directory.
The ml/v1 service (include/local_platform/gcs.py) keeps its own twin of this
check, since it is a separate service that imports nothing from the trainer.
"""

from __future__ import annotations

from pathlib import Path


class UnsafePathError(ValueError):
    """An object name that is not a plain relative path under the destination."""


def safe_join(root: str | Path, relative: str) -> Path:
    """`root / relative`, refusing absolute names, empty/`.`/`..` segments, backslashes, NUL,
    and anything that resolves (symlinks included) outside `root`."""
    segments = relative.split("/")
    if (not relative or "\x00" in relative or "\\" in relative
            or any(segment in ("", ".", "..") for segment in segments)):
        raise UnsafePathError(f"{relative!r} is not a plain relative path")
    base = Path(root).resolve()
    target = base.joinpath(*segments).resolve()
    if not target.is_relative_to(base) or target == base:
        raise UnsafePathError(f"{relative!r} leaves {base}")
    return target
