"""Read a batch prediction job's output files back: counts, error types, a summary document.

ml/v1 writes, under the job's outputPath, `prediction.results-NNNNN-of-MMMMM`
(one JSON prediction per line) and `prediction.errors_stats-NNNNN-of-MMMMM`
(one Python tuple repr per line: `('error message', count)`).

Vertex AI writes, in the job's ``prediction-<model>-<time>/`` folder (its
``outputInfo.gcsOutputDirectory``), ``predictions_NNNNN.jsonl`` (``{"instance", "prediction"}``
lines) and ``errors_NNNNN.jsonl`` (``{"instance", "error": {"code", "message"}}`` lines):
``summarize_vertex`` reads those into the same summary.

Only the job's own final shards count: one consistent `-of-N` set directly
under the output path. Shards of another N (an earlier run with another
number of inputs, a crashed writer) are listed as ignored, never added in.
Files are read line by line, so a large output is never held whole in memory.
"""

from __future__ import annotations

import ast
import contextlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

RESULTS = re.compile(r"prediction\.results-\d{5}-of-\d{5}$")
ERRORS_STATS = re.compile(r"prediction\.errors_stats-\d{5}-of-\d{5}$")
SHARD = re.compile(r"/prediction\.(results|errors_stats)-(\d{5})-of-(\d{5})$")
VERTEX_FILE = re.compile(r"/(predictions|errors)_\d{5}\.jsonl$")


def parse_errors_stats(text: str | Iterable[str]) -> Counter:
    """`('message', 3)` lines -> Counter({'message': 3}); a line that is not such a tuple is counted as-is."""
    counts: Counter = Counter()
    for line in text.splitlines() if isinstance(text, str) else text:
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
    """What a batch job produced, counted from its output files (summary.json holds `to_dict()`)."""

    job_id: str
    output_path: str
    prediction_count: int
    error_count: int
    result_files: list[str] = field(default_factory=list)
    errors_stats_files: list[str] = field(default_factory=list)
    result_lines: int = 0
    error_types: dict[str, int] = field(default_factory=dict)
    sample_keys: list[str] = field(default_factory=list)
    ignored_files: list[str] = field(default_factory=list)  # shards of another run's `-of-N`, not counted

    @property
    def error_rate(self) -> float:
        """errors / (predictions + errors); 0 when the job produced neither."""
        total = self.prediction_count + self.error_count
        return self.error_count / total if total else 0.0

    def to_dict(self) -> dict:
        """The summary as JSON, with the error rate."""
        return {**asdict(self), "error_rate": self.error_rate}


@dataclass
class _ShardSet:
    """The shards of one `-of-N` under an output path."""

    total: int
    results: dict[int, str] = field(default_factory=dict)
    errors_stats: dict[int, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.results) == self.total

    def files(self) -> list[str]:
        return [*self.results.values(), *self.errors_stats.values()]


def shard_sets(output_path: str, uris: Iterable[str]) -> list[_ShardSet]:
    """Shards directly under `output_path`, grouped by their `-of-N`, complete sets first, then larger N."""
    root = output_path.rstrip("/")
    sets: dict[int, _ShardSet] = {}
    for uri in uris:
        match = SHARD.search(uri)
        if not match or uri[: match.start()] != root:
            continue
        kind, index, total = match.group(1), int(match.group(2)), int(match.group(3))
        if index >= total:
            continue
        shard_set = sets.setdefault(total, _ShardSet(total))
        (shard_set.results if kind == "results" else shard_set.errors_stats)[index] = uri
    return sorted(sets.values(), key=lambda s: (not s.complete, -s.total))


def _count_lines(uris: Iterable[str], read_lines: Callable[[str], Iterable[str]], sample_keys: int,
                 key_of: Callable[[dict], object] = lambda row: row.get("key")) -> tuple[int, list[str]]:
    """Non-empty lines of the result files, and the keys (``key_of`` a row) of the first ``sample_keys``."""
    lines, keys = 0, []
    for uri in uris:
        for line in read_lines(uri):
            if not line.strip():
                continue
            lines += 1
            if len(keys) < sample_keys:
                with contextlib.suppress(ValueError, AttributeError, KeyError, TypeError):
                    keys.append(str(key_of(json.loads(line))))
    return lines, keys


def summarize(*, job_id: str, output_path: str, prediction_output: dict, list_uris,
              read_lines: Callable[[str], Iterable[str]], sample_keys: int = 3) -> BatchSummary:
    """Summarise the job's own shards under `output_path`; `list_uris` / `read_lines` are the GCS readers to use.

    With more than one candidate `-of-N` set (outputs of an earlier run left
    beside this one's), the complete set whose line count equals the job's
    predictionCount is the job's; the others are reported in ignored_files.
    """
    prediction_count = int(prediction_output.get("predictionCount") or 0)
    candidates = shard_sets(output_path, list_uris(output_path))
    chosen, lines, keys = None, 0, []
    for candidate in candidates:  # complete sets first: usually there is only one
        counted, sampled = _count_lines(sorted(candidate.results.values()), read_lines, sample_keys)
        if chosen is None or counted == prediction_count:
            chosen, lines, keys = candidate, counted, sampled
        if counted == prediction_count or len(candidates) == 1:
            break
    results = sorted(chosen.results.values()) if chosen else []
    stats = sorted(chosen.errors_stats.values()) if chosen else []
    errors: Counter = Counter()
    for uri in stats:
        errors.update(parse_errors_stats(read_lines(uri)))
    types: Counter = Counter()
    for message, count in errors.items():
        types[error_type(message)] += count
    return BatchSummary(
        job_id=job_id,
        output_path=output_path,
        prediction_count=prediction_count,
        error_count=int(prediction_output.get("errorCount") or 0),
        result_files=results,
        errors_stats_files=stats,
        result_lines=lines,
        error_types=dict(types.most_common()),
        sample_keys=keys,
        ignored_files=sorted(uri for candidate in candidates if candidate is not chosen
                             for uri in candidate.files()),
    )


def summarize_vertex(*, job_id: str, output_path: str, job: dict, list_uris,
                     read_lines: Callable[[str], Iterable[str]], sample_keys: int = 3) -> BatchSummary:
    """The summary of a Vertex AI batch prediction job (``job``: the BatchPredictionJob as a JSON dict)."""
    folder = (job.get("outputInfo") or {}).get("gcsOutputDirectory", "")
    files = [uri for uri in list_uris(folder) if VERTEX_FILE.search(uri)] if folder else []
    results = sorted(uri for uri in files if "/predictions_" in uri)
    errors_files = sorted(uri for uri in files if "/errors_" in uri)
    lines, keys = _count_lines(results, read_lines, sample_keys, key_of=lambda row: row["prediction"].get("key"))
    types: Counter = Counter()
    for uri in errors_files:
        for line in read_lines(uri):
            if line.strip():
                try:
                    message = str(json.loads(line)["error"].get("message", ""))
                except (ValueError, KeyError, AttributeError, TypeError):
                    message = line
                types[error_type(message)] += 1
    stats = job.get("completionStats") or {}
    return BatchSummary(job_id=job_id, output_path=folder or output_path,
                        prediction_count=int(stats.get("successfulCount") or 0),
                        error_count=int(stats.get("failedCount") or 0), result_files=results,
                        errors_stats_files=errors_files, result_lines=lines, error_types=dict(types.most_common()),
                        sample_keys=keys)
