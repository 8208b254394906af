"""Batch prediction jobs: JSON and TFRecord inputs with bad records, outputs in GCS, cancel, filters."""

from __future__ import annotations

import ast
import gzip
import json
import struct

import pytest
from googleapiclient.errors import HttpError

from tests.include.local_platform.conftest import PARENT, unique, wait_job


def tfrecord(records: list[bytes]) -> bytes:
    """TFRecord framing written by hand (length, crc, data, crc); the service ignores CRCs."""
    out = b""
    for record in records:
        out += struct.pack("<Q", len(record)) + b"\0" * 4 + record + b"\0" * 4
    return out


def image_examples(keys: list[str]) -> list[bytes]:
    """Serialized tf.Examples of one grey 8x8 JPEG under ``image/encoded``, each with its ``key``."""
    import tensorflow as tf

    jpeg = tf.io.encode_jpeg(tf.fill([8, 8, 3], tf.constant(128, tf.uint8))).numpy()
    return [tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        "key": tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode()]))})).SerializeToString()
        for key in keys]


def read_outputs(bucket, prefix: str) -> tuple[list[dict], list[tuple[str, int]], list[str]]:
    results, errors, names = [], [], []
    for blob in bucket.list_blobs(prefix=prefix + "/"):
        names.append(blob.name.rsplit("/", 1)[-1])
        text = blob.download_as_text()
        if "prediction.results-" in blob.name:
            results += [json.loads(line) for line in text.splitlines() if line]
        elif "prediction.errors_stats-" in blob.name:
            errors += [ast.literal_eval(line) for line in text.splitlines() if line]
    return results, errors, sorted(names)


def start_job(api, body: dict) -> str:
    job_id = body.setdefault("jobId", unique("job"))
    api.projects().jobs().create(parent=PARENT, body=body).execute()
    return job_id


def prediction_input(source: dict, inputs: list[str], output: str, data_format="JSON", **extra) -> dict:
    return {"predictionInput": {**source, "dataFormat": data_format, "inputPaths": inputs,
                                "outputPath": output, "region": "us-central1", **extra}}


def test_json_job_with_bad_lines_over_two_files(ml_api, deploy, bucket, gcs_prefix):
    model, _ = deploy("tiny")
    good = [json.dumps({"x": [i, 1], "key": f"k{i}"}) for i in range(25)]
    bucket.blob(f"{gcs_prefix}/in/part-0.json").upload_from_string(
        "\n".join([*good[:15], "{broken json", json.dumps({"x": [-5, 1], "key": "neg"}), ""]))
    short = '{"x": [1], "key": "short"}'
    bucket.blob(f"{gcs_prefix}/in/part-1.json").upload_from_string("\n".join([*good[15:], short]))
    bucket.blob(f"{gcs_prefix}/in/other.txt").upload_from_string("not matched by the wildcard")
    output = f"gs://{bucket.name}/{gcs_prefix}/out"
    job_id = start_job(ml_api, prediction_input({"modelName": model}, [f"gs://{bucket.name}/{gcs_prefix}/in/part-*"],
                                                output, batchSize=4))
    job = wait_job(ml_api, job_id)
    assert job["state"] == "SUCCEEDED", job
    assert job["predictionOutput"]["predictionCount"] == "25"
    assert job["predictionOutput"]["errorCount"] == "3"
    assert job["predictionOutput"]["outputPath"] == output
    results, errors, names = read_outputs(bucket, f"{gcs_prefix}/out")
    assert names == ["prediction.errors_stats-00000-of-00002", "prediction.errors_stats-00001-of-00002",
                     "prediction.results-00000-of-00002", "prediction.results-00001-of-00002"]
    assert sorted(r["key"] for r in results) == sorted(f"k{i}" for i in range(25))
    assert all(r["y"] == 2.0 * (int(r["key"][1:]) + 1) for r in results)
    messages = " | ".join(message for message, _ in errors)
    assert sum(count for _, count in errors) == 3
    assert "Failed to parse input line 16 as JSON" in messages
    assert "must not be negative" in messages and "shape" in messages


def test_results_keep_input_order_and_every_error_with_batches_in_flight(ml_api, deploy, bucket, gcs_prefix):
    """Batches run PREDICT_IN_FLIGHT at a time; the result file is still in input order and each
    batch's errors (bad JSON, a bad shape, a value the model refuses) are counted once."""
    model, _ = deploy("tiny")
    lines, expected_keys = [], []
    for i in range(90):
        if i % 13 == 4:
            lines.append("{broken json")
        elif i % 11 == 7:
            lines.append(json.dumps({"x": [1], "key": f"short{i}"}))
        elif i % 17 == 9:
            lines.append(json.dumps({"x": [-i, 1], "key": f"neg{i}"}))
        else:
            lines.append(json.dumps({"x": [i, 1], "key": f"k{i}"}))
            expected_keys.append(f"k{i}")
    bucket.blob(f"{gcs_prefix}/in/lines.json").upload_from_string("\n".join(lines))
    job_id = start_job(ml_api, prediction_input({"modelName": model}, [f"gs://{bucket.name}/{gcs_prefix}/in/lines.json"],
                                                f"gs://{bucket.name}/{gcs_prefix}/out", batchSize=3))
    job = wait_job(ml_api, job_id)
    assert job["state"] == "SUCCEEDED", job
    results, errors, _ = read_outputs(bucket, f"{gcs_prefix}/out")
    assert [r["key"] for r in results] == expected_keys
    assert all(r["y"] == 2.0 * (int(r["key"][1:]) + 1) for r in results)
    by_kind = {"json": 0, "negative": 0, "shape": 0}
    for message, count in errors:
        kind = "json" if "as JSON" in message else "negative" if "must not be negative" in message else "shape"
        by_kind[kind] += count
    assert by_kind == {"json": 7, "negative": 4, "shape": 8}
    assert job["predictionOutput"]["errorCount"] == "19"
    assert job["predictionOutput"]["predictionCount"] == str(len(expected_keys))


def test_tfrecord_and_gzip_jobs_on_a_version(ml_api, deploy, bucket, gcs_prefix):
    _, version = deploy("images")
    records = [*image_examples([f"r{i}" for i in range(10)]), b"not an example"]
    bucket.blob(f"{gcs_prefix}/in.tfrecord").upload_from_string(tfrecord(records))
    bucket.blob(f"{gcs_prefix}/in.tfrecord.gz").upload_from_string(gzip.compress(tfrecord(records[:4])))
    for data_format, path, expected in (("TF_RECORD", "in.tfrecord", 10), ("TF_RECORD_GZIP", "in.tfrecord.gz", 4)):
        output = f"gs://{bucket.name}/{gcs_prefix}/out_{data_format}"
        job_id = start_job(ml_api, prediction_input({"versionName": version}, [f"gs://{bucket.name}/{gcs_prefix}/{path}"],
                                                    output, data_format, signatureName="examples", batchSize=3))
        job = wait_job(ml_api, job_id)
        assert job["state"] == "SUCCEEDED", job
        assert job["predictionOutput"]["predictionCount"] == str(expected)
        results, errors, _ = read_outputs(bucket, f"{gcs_prefix}/out_{data_format}")
        assert sorted(r["key"] for r in results) == sorted(f"r{i}" for i in range(expected))
        assert all(abs(r["brightness"] - 128 / 255) < 0.02 for r in results)
        if data_format == "TF_RECORD":
            assert job["predictionOutput"]["errorCount"] == "1" and len(errors) == 1


def test_job_from_uri_and_failures(ml_api, model_uris, bucket, gcs_prefix):
    bucket.blob(f"{gcs_prefix}/in.json").upload_from_string(json.dumps([1, 2, 3]))
    output = f"gs://{bucket.name}/{gcs_prefix}/out"
    job_id = start_job(ml_api, prediction_input({"uri": model_uris["single"]}, [f"gs://{bucket.name}/{gcs_prefix}/in.json"],
                                                output))
    job = wait_job(ml_api, job_id)
    assert job["state"] == "SUCCEEDED" and job["predictionOutput"]["predictionCount"] == "1"
    # missing inputs fail the job with a clear message
    job_id = start_job(ml_api, prediction_input({"uri": model_uris["single"]}, [f"gs://{bucket.name}/{gcs_prefix}/nope*"],
                                                output))
    job = wait_job(ml_api, job_id)
    assert job["state"] == "FAILED" and "No input files match" in job["errorMessage"]
    job_id = start_job(ml_api, prediction_input({"uri": model_uris["single"]}, [f"gs://{bucket.name}/{gcs_prefix}/in.json"],
                                                output, signatureName="nope"))
    job = wait_job(ml_api, job_id)
    assert job["state"] == "FAILED" and "no signature 'nope'" in job["errorMessage"]


@pytest.mark.parametrize(("change", "fragment"), [
    ({"dataFormat": "CSV"}, "dataFormat"),
    ({"inputPaths": []}, "inputPaths"),
    ({"outputPath": "/tmp/out"}, "outputPath"),
    ({"region": ""}, "region"),
    ({"batchSize": 0}, "batchSize"),
    ({"versionName": "projects/test-project/models/m/versions/v"}, "exactly one of"),
    ({"modelName": "projects/test-project/models/does_not_exist"}, "was not found"),
])
def test_job_validation(ml_api, bucket, change, fragment):
    body = prediction_input({"uri": "gs://b/model"}, ["gs://b/in"], "gs://b/out")
    if "modelName" in change:
        del body["predictionInput"]["uri"]
    body["predictionInput"].update(change)
    with pytest.raises(HttpError) as excinfo:
        start_job(ml_api, body)
    assert excinfo.value.resp.status == 400 and fragment in json.loads(excinfo.value.content)["error"]["message"]


def test_duplicate_job_id_and_bad_id(ml_api, model_uris, bucket, gcs_prefix):
    bucket.blob(f"{gcs_prefix}/in.json").upload_from_string("[1, 1, 1]\n")
    body = prediction_input({"uri": model_uris["single"]}, [f"gs://{bucket.name}/{gcs_prefix}/in.json"],
                            f"gs://{bucket.name}/{gcs_prefix}/out")
    job_id = start_job(ml_api, dict(body))
    with pytest.raises(HttpError) as excinfo:
        start_job(ml_api, {**body, "jobId": job_id})
    assert excinfo.value.resp.status == 409  # Google's words (gcloud showed them on a re-submitted job id)
    error = json.loads(excinfo.value.content)["error"]
    assert error["message"] == "Field: job.job_id Error: A job with this id already exists."
    assert error["details"][0]["fieldViolations"] == [{"field": "job.job_id",
                                                      "description": "A job with this id already exists."}]
    with pytest.raises(HttpError) as excinfo:
        start_job(ml_api, {**body, "jobId": "bad-id"})
    assert excinfo.value.resp.status == 400
    wait_job(ml_api, job_id)


def test_cancel_running_job_and_list_filters(ml_api, deploy, bucket, gcs_prefix):
    model, _ = deploy("tiny")
    lines = "\n".join(json.dumps({"x": [i % 7, 1], "key": str(i)}) for i in range(40_000))
    bucket.blob(f"{gcs_prefix}/big.json").upload_from_string(lines)
    prefix = unique("cancelme")
    job_id = start_job(ml_api, {"jobId": prefix, **prediction_input(
        {"modelName": model}, [f"gs://{bucket.name}/{gcs_prefix}/big.json"], f"gs://{bucket.name}/{gcs_prefix}/out",
        batchSize=1)})
    wait_job(ml_api, job_id, states=("RUNNING",))
    assert ml_api.projects().jobs().cancel(name=f"{PARENT}/jobs/{job_id}", body={}).execute() == {}
    job = wait_job(ml_api, job_id)
    assert job["state"] == "CANCELLED"
    assert int(job["predictionOutput"]["predictionCount"]) < 40_000
    with pytest.raises(HttpError) as excinfo:
        ml_api.projects().jobs().cancel(name=f"{PARENT}/jobs/{job_id}", body={}).execute()
    assert excinfo.value.resp.status == 400

    jobs = ml_api.projects().jobs()
    assert [j["jobId"] for j in jobs.list(parent=PARENT, filter=f"jobId:{prefix[:12]}*").execute()["jobs"]] == [job_id]
    cancelled = jobs.list(parent=PARENT, filter="state=CANCELLED").execute()["jobs"]
    assert job_id in [j["jobId"] for j in cancelled]
    assert all(j["state"] == "CANCELLED" for j in cancelled)
    with pytest.raises(HttpError) as excinfo:
        jobs.list(parent=PARENT, filter="createTime > 3").execute()
    assert excinfo.value.resp.status == 400


def test_over_long_line_and_record_are_that_inputs_errors(ml_api, model_uris, bucket, gcs_prefix):
    """A 2 MB JSON line and a 17 MB TFRecord record: one error each, the inputs around them still predicted."""
    import tensorflow as tf

    from include.local_platform.workers.batch_instances import MAX_LINE_BYTES, MAX_RECORD_BYTES

    long_line = json.dumps([1.0] * (MAX_LINE_BYTES // 4))
    assert len(long_line) > MAX_LINE_BYTES
    bucket.blob(f"{gcs_prefix}/lines.json").upload_from_string("\n".join(["[1, 2, 3]", long_line, "[4, 5, 6]", ""]))
    output = f"gs://{bucket.name}/{gcs_prefix}/out_json"
    job = wait_job(ml_api, start_job(ml_api, prediction_input(
        {"uri": model_uris["single"]}, [f"gs://{bucket.name}/{gcs_prefix}/lines.json"], output)))
    assert job["state"] == "SUCCEEDED", job
    assert (job["predictionOutput"]["predictionCount"], job["predictionOutput"]["errorCount"]) == ("2", "1")
    _, errors, _ = read_outputs(bucket, f"{gcs_prefix}/out_json")
    assert errors == [(f"Input line 2 is longer than the limit of {MAX_LINE_BYTES} bytes.", 1)]

    def example(key: str, padding: int = 0) -> bytes:
        jpeg = tf.io.encode_jpeg(tf.fill([4, 4, 3], tf.constant(50, tf.uint8))).numpy()
        return tf.train.Example(features=tf.train.Features(feature={
            "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
            "key": tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode() + b" " * padding]))}
        )).SerializeToString()

    huge = example("huge", padding=MAX_RECORD_BYTES)
    bucket.blob(f"{gcs_prefix}/in.tfrecord").upload_from_string(tfrecord([example("a"), huge, example("b")]))
    job = wait_job(ml_api, start_job(ml_api, prediction_input(
        {"uri": model_uris["images"]}, [f"gs://{bucket.name}/{gcs_prefix}/in.tfrecord"],
        f"gs://{bucket.name}/{gcs_prefix}/out_tf", "TF_RECORD", signatureName="examples")))
    assert job["state"] == "SUCCEEDED", job
    results, errors, _ = read_outputs(bucket, f"{gcs_prefix}/out_tf")
    assert sorted(r["key"] for r in results) == ["a", "b"]
    assert errors == [(f"TFRecord record 2 is longer than the limit of {MAX_RECORD_BYTES} bytes.", 1)]


def test_wildcards_stay_in_one_segment_and_a_run_replaces_earlier_shards(ml_api, model_uris, bucket, gcs_prefix):
    from include.lifecycle import batch_outputs, storage

    for name, lines in (("in/a.json", 2), ("in/b.json", 3), ("in/sub/c.json", 5)):
        bucket.blob(f"{gcs_prefix}/{name}").upload_from_string("\n".join("[1, 1, 1]" for _ in range(lines)))
    out = f"{gcs_prefix}/out"
    stale = ["prediction.results-00000-of-00005", "prediction.results-00003-of-00005",
             "prediction.errors_stats-00004-of-00005", "prediction.results-00000-of-00002"]
    for name in [*stale, "notes.txt", "keep/prediction.results-00000-of-00001"]:
        bucket.blob(f"{out}/{name}").upload_from_string('{"stale": true}\n')
    root = f"gs://{bucket.name}/{gcs_prefix}"
    for pattern, files, count in (("in/*.json", 2, 5), ("in/**.json", 3, 10), ("in/[ab].json", 2, 5)):
        job = wait_job(ml_api, start_job(ml_api, prediction_input(
            {"uri": model_uris["single"]}, [f"{root}/{pattern}"], f"{root}/out")))
        assert job["state"] == "SUCCEEDED" and job["predictionOutput"]["predictionCount"] == str(count), job
        names = sorted(blob.name[len(out) + 1:] for blob in bucket.list_blobs(prefix=f"{out}/"))
        expected = [f"prediction.{kind}-{i:05d}-of-{files:05d}" for kind in ("errors_stats", "results")
                    for i in range(files)]
        assert names == sorted([*expected, "keep/prediction.results-00000-of-00001", "notes.txt"]), pattern
        summary = batch_outputs.summarize(job_id=job["jobId"], output_path=f"{root}/out",
                                          prediction_output=job["predictionOutput"], list_uris=storage.list_uris,
                                          read_lines=storage.read_lines)
        assert (summary.result_lines, len(summary.result_files), summary.ignored_files) == (count, files, [])


def test_cancel_while_preparing_is_never_lost_even_on_empty_input(ml_api, ml_service, model_uris, bucket,
                                                                  gcs_prefix):
    from tests.include.local_platform.conftest import post_fault

    bucket.blob(f"{gcs_prefix}/empty.json").upload_from_string("")
    body = prediction_input({"uri": model_uris["single"]}, [f"gs://{bucket.name}/{gcs_prefix}/empty.json"],
                            f"gs://{bucket.name}/{gcs_prefix}/out")
    post_fault(ml_service.url, {"delay_at": "batch.preparing", "seconds": 3})
    try:
        job_id = start_job(ml_api, body)
        wait_job(ml_api, job_id, states=("PREPARING",))
        ml_api.projects().jobs().cancel(name=f"{PARENT}/jobs/{job_id}", body={}).execute()
        job = wait_job(ml_api, job_id)
    finally:
        post_fault(ml_service.url, None)
    assert job["state"] == "CANCELLED", job
    assert "errorMessage" not in job
    assert not list(bucket.list_blobs(prefix=f"{gcs_prefix}/out/"))
    # the same empty input, not cancelled: an empty set of shards, SUCCEEDED with zero counts
    job = wait_job(ml_api, start_job(ml_api, {**body, "jobId": unique("job")}))
    assert job["state"] == "SUCCEEDED" and job["predictionOutput"]["predictionCount"] == "0", job


def test_batches_are_capped_by_bytes_as_well_as_by_count():
    """batchSize counts instances; a batch of 10,000 megabyte lines would hold gigabytes. Batches also close at
    the byte cap (one instance at least), in input order, errors kept with their batch."""
    from include.local_platform.workers.batch_instances import batches

    items = [(f"i{n}", None, 1_000_000) for n in range(10)] + [(None, "bad line", 0), ("small", None, 10)]
    grouped = list(batches(iter(items), 10_000, max_bytes=3_000_000))
    assert [len(batch) for batch in grouped] == [3, 3, 3, 3]
    assert [item for batch in grouped for item in batch] == [(i, e) for i, e, _ in items]
    assert [len(b) for b in batches(iter(items), 2, max_bytes=10**9)] == [2, 2, 2, 2, 2, 2]
    assert [len(b) for b in batches(iter([("huge", None, 10**8)]), 64, max_bytes=1)] == [1]


@pytest.mark.parametrize("range_bytes", [1, 40, 300, 10_000])
def test_runs_of_lines_read_apart_give_what_the_whole_file_gives(range_bytes):
    """The beam engine's workers each read a run of lines (``line_ranges``): the same instances and the same
    errors, line numbers included, as one reader of the whole file; runs tile the file at line starts."""
    import io

    from include.local_platform.workers.batch_instances import ByteWindow, line_ranges, read_instances

    lines = [json.dumps({"x": [n, 1], "key": f"k{n}"}) if n % 7 else "{broken" for n in range(1, 120)]
    lines[30] = ""
    data = ("\n".join(lines) + "\n\n" + json.dumps({"x": [0, 0]})).encode()

    runs = list(line_ranges(io.BytesIO(data), range_bytes, chunk_size=64))
    apart = [found for start, end, first in runs
             for found in read_instances(ByteWindow(io.BytesIO(data), start, end - start), "JSON", first_line=first)]

    assert apart == list(read_instances(io.BytesIO(data), "JSON"))
    assert [start for start, _, _ in runs] == [0] + [end for _, end, _ in runs[:-1]] and runs[-1][1] == len(data)
    assert all(start == 0 or data[start - 1:start] == b"\n" for start, _, _ in runs)
    assert ("Failed to parse input line 7 as JSON: JSONDecodeError" in {error for _, error in apart})
    assert len(runs) >= len(data) // (range_bytes + 64 + 40)  # each run ends within a chunk past range_bytes
