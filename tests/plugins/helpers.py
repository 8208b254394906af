"""Small helpers shared by the plugin tests."""

from __future__ import annotations

import json

TEST_PROJECT = "test-project"


def write_lines(bucket, path: str, rows: list) -> str:
    """Write rows as JSON lines to gs://bucket/path; returns the URI."""
    bucket.blob(path).upload_from_string("".join(json.dumps(row) + "\n" for row in rows))
    return f"gs://{bucket.name}/{path}"


def instances(n: int, *, start: int = 0, bad_every: int = 0) -> list[dict]:
    """Instances for the tiny model; every `bad_every`-th has a negative x[0], which the model rejects."""
    rows = []
    for i in range(start, start + n):
        bad = bad_every and i % bad_every == bad_every - 1
        rows.append({"x": [-1.0 if bad else float(i), 1.0], "key": f"k{i}"})
    return rows
