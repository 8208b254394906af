"""Server-side batching on a real SavedModel: calls joined into one TensorFlow call, each caller its own rows.

The probe model answers, per instance, how many instances TensorFlow was called with
(`batch`), so every assertion reads what really reached TensorFlow.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from include.local_platform.errors import PredictionError
from include.local_platform.serving.batching import Batcher, BatchingOptions
from include.local_platform.serving.saved_model import LoadedModel
from include.local_platform.serving.tensors import prepare
from tests.savedmodels import export_batch_probe_model


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    return LoadedModel(export_batch_probe_model(tmp_path_factory.mktemp("probe") / "model")).signature(None)


@pytest.fixture(scope="module")
def threads():
    with ThreadPoolExecutor(2) as pool:
        yield pool


def _calls(signature, options: BatchingOptions, threads, *bodies, gaps: float = 0.0) -> list:
    """Submit each call's instances (`gaps` seconds apart, else all at once); each call's rows or error."""

    async def main() -> list:
        batcher = Batcher("probe", signature, options, threads)

        async def one(index: int, instances: list):
            await asyncio.sleep(index * gaps) if gaps else None
            try:
                return await batcher.predict(prepare(signature, instances))
            except PredictionError as error:
                return error

        return await asyncio.gather(*(one(index, body) for index, body in enumerate(bodies)))

    return asyncio.run(main())


def _batches(rows: list[dict]) -> list[int]:
    return [int(row["batch"]) for row in rows]


def test_calls_that_arrive_together_are_one_tensorflow_call_and_each_gets_its_own_rows(probe, threads):
    bodies = [[[1.0, 1.0]], [[2.0, 2.0], [2.5, 2.5]], [[3.0, 3.0]], [[4.0, 4.0], [4.5, 4.5], [4.75, 4.75]]]
    answers = _calls(probe, BatchingOptions(max_batch_size=16), threads, *bodies)
    for body, rows in zip(bodies, answers, strict=True):
        assert [row["x"].tolist() for row in rows] == body  # its own rows, in its order
        assert _batches(rows) == [7] * len(body)  # all seven instances in one call


def test_batches_hold_at_most_max_batch_size_and_a_larger_call_runs_alone(probe, threads):
    bodies = [[[float(i), 0.0]] for i in range(7)] + [[[9.0, 0.0]] * 5]
    answers = _calls(probe, BatchingOptions(max_batch_size=3, num_batch_threads=1), threads, *bodies)
    assert [rows[0]["x"].tolist() for rows in answers[:7]] == [[float(i), 0.0] for i in range(7)]
    assert [_batches(rows)[0] for rows in answers[:7]] == [3, 3, 3, 3, 3, 3, 1]
    assert _batches(answers[7]) == [5] * 5


def test_calls_whose_shapes_differ_are_not_joined(probe, threads):
    answers = _calls(probe, BatchingOptions(), threads, [[1.0, 1.0]], [[2.0, 2.0, 2.0]], [[3.0, 3.0]])
    assert [_batches(rows) for rows in answers] == [[2], [1], [2]]
    assert answers[1][0]["x"].tolist() == [2.0, 2.0, 2.0]


def test_a_call_tensorflow_refuses_fails_alone_and_the_others_are_answered(probe, threads):
    answers = _calls(probe, BatchingOptions(), threads, [[1.0, 0.0]], [[-1.0, 0.0]], [[3.0, 0.0], [4.0, 0.0]])
    assert isinstance(answers[1], PredictionError) and "x[0] must not be negative" in str(answers[1])
    assert answers[0][0]["x"].tolist() == [1.0, 0.0]
    assert [row["x"].tolist() for row in answers[2]] == [[3.0, 0.0], [4.0, 0.0]]
    assert _batches(answers[0]) == [1] and _batches(answers[2]) == [2, 2]  # rerun call by call


def test_without_a_timeout_a_lone_call_never_waits_and_with_one_later_calls_join(probe, threads):
    started = time.perf_counter()
    lone = _calls(probe, BatchingOptions(), threads, [[1.0, 0.0]])
    assert _batches(lone[0]) == [1] and time.perf_counter() - started < 1.0
    answers = _calls(probe, BatchingOptions(batch_timeout_micros=400_000), threads, [[1.0, 0.0]], [[2.0, 0.0]],
                     gaps=0.1)
    assert [_batches(rows) for rows in answers] == [[2], [2]]  # the second arrived 0.1 s later and joined
    spread = _calls(probe, BatchingOptions(), threads, [[1.0, 0.0]], [[2.0, 0.0]], gaps=0.1)
    assert [_batches(rows) for rows in spread] == [[1], [1]]


@pytest.mark.parametrize("options", [dict(max_batch_size=0), dict(num_batch_threads=0),
                                     dict(batch_timeout_micros=-1)])
def test_options_out_of_range_are_refused(options):
    with pytest.raises(ValueError, match="out of range"):
        BatchingOptions(**options)


def test_options_from_the_environment(monkeypatch):
    monkeypatch.setenv("ML_ENGINE_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("ML_ENGINE_NUM_BATCH_THREADS", "3")
    assert BatchingOptions.from_environment() == BatchingOptions(max_batch_size=8, num_batch_threads=3)
    monkeypatch.setenv("ML_ENGINE_BATCH_TIMEOUT_MICROS", "soon")
    with pytest.raises(ValueError, match="ML_ENGINE_BATCH_TIMEOUT_MICROS must be an integer"):
        BatchingOptions.from_environment()
