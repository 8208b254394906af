"""Read a batch prediction job's output files back: counts, error types, a summary document.

ml/v1 writes, under the job's outputPath, `prediction.results-NNNNN-of-MMMMM`
(one JSON prediction per line) and `prediction.errors_stats-NNNNN-of-MMMMM`
(one Python tuple repr per line: `('error message', count)`).
"""

from __future__ import annotations

import ast
import contextlib
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field

RESULTS = re.compile(r"prediction\.results-\d{5}-of-\d{5}$")
ERRORS_STATS = re.compile(r"prediction\.errors_stats-\d{5}-of-\d{5}$")


def parse_errors_stats(text: str) -> Counter:
    """`('message', 3)` lines -> Counter({'message': 3}); a line that is not such a tuple is counted as-is."""
    counts: Counter = Counter()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            message, count = ast.literal_eval(line)
            counts[str(message)] += int(count)
        except (ValueError, SyntaxError, TypeError):
            counts[line] += 1
    return counts


def error_type(message: str, width: int = 120) -> str:
    """A short, stable name for an error message (its first line, cut)."""
    first = message.strip().splitlines()[0] if message.strip() else "(empty message)"
    return first if len(first) <= width else first[: width - 1] + "…"


@dataclass
class BatchSummary:
    job_id: str
    output_path: str
    prediction_count: int
    error_count: int
    result_files: list[str] = field(default_factory=list)
    errors_stats_files: list[str] = field(default_factory=list)
    result_lines: int = 0
    error_types: dict[str, int] = field(default_factory=dict)
    sample_keys: list[str] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        total = self.prediction_count + self.error_count
        return self.error_count / total if total else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "error_rate": self.error_rate}


def summarize(*, job_id: str, output_path: str, prediction_output: dict, list_uris, read_text,
              sample_keys: int = 3) -> BatchSummary:
    """Summarise the files under `output_path`; `list_uris` / `read_text` are the GCS readers to use."""
    uris = list_uris(output_path)
    results = [u for u in uris if RESULTS.search(u)]
    stats = [u for u in uris if ERRORS_STATS.search(u)]
    lines = 0
    keys: list[str] = []
    for uri in results:
        for line in read_text(uri).splitlines():
            if not line.strip():
                continue
            lines += 1
            if len(keys) < sample_keys:
                with contextlib.suppress(ValueError, AttributeError):
                    keys.append(str(json.loads(line).get("key")))
    errors: Counter = Counter()
    for uri in stats:
        errors.update(parse_errors_stats(read_text(uri)))
    types: Counter = Counter()
    for message, count in errors.items():
        types[error_type(message)] += count
    return BatchSummary(
        job_id=job_id,
        output_path=output_path,
        prediction_count=int(prediction_output.get("predictionCount") or 0),
        error_count=int(prediction_output.get("errorCount") or 0),
        result_files=results,
        errors_stats_files=stats,
        result_lines=lines,
        error_types=dict(types.most_common()),
        sample_keys=keys,
    )
