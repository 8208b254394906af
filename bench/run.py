"""`make bench`: the local ml/v1 service against raw TensorFlow, measured side by side in one run.

Same SavedModel (the project's heatmap network, `b64` and `instances`
serving variants), same instances, same batch size:

- batch: a batch prediction job (JSON lines read from GCS, results written to
  GCS) in instances/s, as a ratio of calling the loaded signature in-process;
- online: one-instance predict latency p50/p95 over a kept-alive HTTP
  connection, against the raw signature call on the same instance, the two
  alternating call by call.

Two raw references: TensorFlow's defaults, one call at a time, in this
process (the issue's reference), and "matched": TensorFlow the way the
service runs it (one thread per op, PREDICT_IN_FLIGHT batch calls at once) in
a child process (bench/raw_reference.py). The first ratio says what a user
gets against plain TensorFlow; the second isolates the service's own cost.

Rounds alternate service and raw runs so machine noise hits both alike;
medians are reported. The service's peak RSS is sampled during every job, and
once more on a large input (`--memory-instances`) to show memory stays flat.
Each DAG file's parse time is measured as Airflow's dag-processor pays it.
Results go to the terminal and to `$STATE_DIR/bench/latest.json`.

Goals (issue 12): batch ratio >= 0.9 (b64) / 0.7 (instances); online p50
overhead <= 1 ms and p95 <= 2x raw p95.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.beam_engine import bench_beam_engine, print_beam_table
from bench.dag_parse import parse_times
from bench.online_concurrency import bench_online_concurrency, print_concurrency_table
from bench.raw_reference import MatchedReference
from bench.replicas import bench_replicas, print_replicas_table
from bench.rss import PeakSampler, hwm_mb
from bench.transport_floor import TransportFloor
from include.local_platform.workers.local_engine import PREDICT_IN_FLIGHT
from tools import devstack

PROJECT = "bench-project"
BUCKET = "bench-bucket"
ENGINE = "local"
GOALS = {"b64": 0.9, "instances": 0.7}


def service_intra_op_threads() -> int:
    """The service's TensorFlow intra-op setting as the bench starts it (environment, else the default 1)."""
    return int(os.environ.get("ML_ENGINE_INTRA_OP_THREADS", "1"))


def _images(count: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)


def _export(variant: str, size: int, directory: Path) -> Path:
    from include.trainer.model import build_model
    from include.trainer.serving import HeatmapServer

    HeatmapServer(build_model(size), variant).save(str(directory))
    return directory


def _instances(variant: str, images: np.ndarray) -> list[dict]:
    from include.trainer.features import encode_jpeg

    if variant == "b64":
        return [{"image_bytes": {"b64": base64.b64encode(encode_jpeg(img)).decode()}, "key": f"k{i}"}
                for i, img in enumerate(images)]
    return [{"image": (img / 255.0).round(4).tolist(), "key": f"k{i}"} for i, img in enumerate(images)]


def _raw_inputs(variant: str, instances: list[dict]):
    import tensorflow as tf

    if variant == "b64":
        return {"image_bytes": tf.constant([base64.b64decode(i["image_bytes"]["b64"]) for i in instances]),
                "key": tf.constant([i["key"] for i in instances])}
    return {"image": tf.constant(np.asarray([i["image"] for i in instances], np.float32)),
            "key": tf.constant([i["key"] for i in instances])}


def _raw_batch_seconds(signature, variant: str, instances: list[dict], batch_size: int) -> float:
    """In-process inference at the same batch size (inputs prepared beforehand, outputs to numpy)."""
    batches = [_raw_inputs(variant, instances[i:i + batch_size]) for i in range(0, len(instances), batch_size)]
    started = time.perf_counter()
    for feeds in batches:
        {name: tensor.numpy() for name, tensor in signature(**feeds).items()}
    return time.perf_counter() - started


def _rfc3339_seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _job_seconds(api, model: str, input_uri: str, output_uri: str, batch_size: int, tag: str,
                 sampler: PeakSampler) -> float:
    """Wall time of a batch job from its createTime to its endTime (the service's own clock, so the
    poll interval does not blur it); the job reads its input from and writes its outputs to GCS.
    `sampler` records the service's peak RSS meanwhile."""
    job_id = f"bench_{tag}_{int(time.time() * 1000)}"
    started = time.perf_counter()
    with sampler.sampling():
        api.projects().jobs().create(parent=f"projects/{PROJECT}", body={"jobId": job_id, "predictionInput": {
            "modelName": f"projects/{PROJECT}/models/{model}", "dataFormat": "JSON", "inputPaths": [input_uri],
            "outputPath": output_uri, "region": "us-central1", "batchSize": batch_size}}).execute()
        while True:
            job = api.projects().jobs().get(name=f"projects/{PROJECT}/jobs/{job_id}").execute()
            if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                break
            time.sleep(0.25)  # timing comes from the job itself; poll like a client, not in a busy loop
    if job["state"] != "SUCCEEDED" or job["predictionOutput"]["errorCount"] != "0":
        raise RuntimeError(f"benchmark job did not succeed cleanly: {job}")
    if time.perf_counter() - started < _rfc3339_seconds(job["endTime"]) - _rfc3339_seconds(job["createTime"]):
        raise RuntimeError("job timestamps disagree with the client's clock")
    return _rfc3339_seconds(job["endTime"]) - _rfc3339_seconds(job["createTime"])


def _latencies(call, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def _deploy(api, bucket, model: str, directory: Path) -> None:
    prefix = f"models/{model}"
    for path in directory.rglob("*"):
        if path.is_file():
            bucket.blob(f"{prefix}/{path.relative_to(directory).as_posix()}").upload_from_filename(str(path))
    api.projects().models().create(parent=f"projects/{PROJECT}", body={"name": model}).execute()
    operation = api.projects().models().versions().create(
        parent=f"projects/{PROJECT}/models/{model}",
        body={"name": "v1", "deploymentUri": f"gs://{BUCKET}/{prefix}"}).execute()
    while not api.projects().operations().get(name=operation["name"]).execute().get("done"):
        time.sleep(0.2)


def _upload_lines(bucket, name: str, instances: list[dict], total: int) -> str:
    """`total` JSON lines cycling through `instances` (unique keys), streamed to GCS."""
    lines = [json.dumps({k: v for k, v in i.items() if k != "key"})[:-1].encode() for i in instances]
    path = Path(tempfile.mkdtemp(prefix="bench-input-")) / "input.json"
    with path.open("wb") as out:
        for n in range(total):
            out.write(lines[n % len(lines)] + b', "key": "k%d"}\n' % n)
    bucket.blob(name).upload_from_filename(str(path))
    path.unlink()
    return f"gs://{BUCKET}/{name}"


def bench_variant(variant: str, args, api, bucket, ml_server, workdir: Path) -> dict:
    import tensorflow as tf

    directory = _export(variant, args.image_size, workdir / variant)
    model = f"bench_{variant}"
    _deploy(api, bucket, model, directory)
    signature = tf.saved_model.load(str(directory)).signatures["serving_default"]
    instances = _instances(variant, _images(args.instances, args.image_size))
    bucket.blob(f"inputs/{variant}.json").upload_from_string("\n".join(json.dumps(i) for i in instances))
    input_uri = f"gs://{BUCKET}/inputs/{variant}.json"

    _raw_batch_seconds(signature, variant, instances[: args.batch_size * 2], args.batch_size)  # warm up
    matched = MatchedReference(directory=directory, variant=variant, instances=args.instances,
                               image_size=args.image_size, batch_size=args.batch_size,
                               intra_op_threads=service_intra_op_threads(), in_flight=PREDICT_IN_FLIGHT)
    raw, matched_raw, service = [], [], []
    sampler = PeakSampler(ml_server.process.pid)
    for round_number in range(args.rounds):
        raw.append(_raw_batch_seconds(signature, variant, instances, args.batch_size))
        matched_raw.append(matched.batch_seconds())
        service.append(_job_seconds(api, model, input_uri, f"gs://{BUCKET}/out/{variant}/{round_number}",
                                    args.batch_size, variant, sampler))
    raw_rate = args.instances / statistics.median(raw)
    matched_rate = args.instances / statistics.median(matched_raw)
    service_rate = args.instances / statistics.median(service)
    memory = {"peak_rss_mb": sampler.peak_mb, "rss_before_jobs_mb": sampler.start_mb}
    if args.memory_instances:
        large = PeakSampler(ml_server.process.pid)
        large_uri = _upload_lines(bucket, f"inputs/{variant}_large.json", instances, args.memory_instances)
        seconds = _job_seconds(api, model, large_uri, f"gs://{BUCKET}/out/{variant}/large", args.batch_size,
                               variant, large)
        bucket.blob(f"inputs/{variant}_large.json").delete()
        memory.update(large_instances=args.memory_instances, large_peak_rss_mb=large.peak_mb,
                      large_batch_service_per_s=args.memory_instances / seconds)

    one = instances[:1]
    raw_feeds = _raw_inputs(variant, one)
    body = json.dumps({"instances": one}).encode()
    headers = {"Content-Type": "application/json", **devstack.auth_headers()}
    connection = http.client.HTTPConnection("127.0.0.1", args.ml_port)
    path = f"/v1/projects/{PROJECT}/models/{model}:predict"

    def http_predict() -> int:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200 or b'"predictions"' not in payload[:40]:
            raise RuntimeError(f"predict failed: {response.status} {payload[:200]!r}")
        return len(payload)

    def raw_predict() -> None:
        {name: tensor.numpy() for name, tensor in signature(**raw_feeds).items()}

    floor = TransportFloor(request_body=body, response_bytes=http_predict())
    for _ in range(20):
        http_predict()
        raw_predict()
        floor.call_ms()
    raw_ms, http_ms, floor_ms = [], [], []
    for _ in range(args.online_requests):  # call by call, so load spikes on a shared machine hit all alike
        raw_ms += _latencies(raw_predict, 1)
        http_ms += _latencies(http_predict, 1)
        raw_ms += _latencies(raw_predict, 1)
        floor_ms.append(floor.call_ms())  # after a raw call too: the floor server slept as long
    floor.close()
    # A pass of its own: a third process's TensorFlow call between the two above would slow both
    matched_ms, http_matched_ms = [], []
    for _ in range(args.online_requests):
        matched_ms.append(matched.online_ms())
        http_matched_ms += _latencies(http_predict, 1)
    connection.close()
    matched.close()
    concurrency = bench_online_concurrency(
        url=f"http://127.0.0.1:{args.ml_port}{path}", body=body, headers=headers, signature=signature,
        raw_feeds=lambda n: _raw_inputs(variant, one * n), seconds=args.concurrency_seconds, variant=variant) \
        if variant in args.concurrency_variants.split(",") and args.concurrency_seconds > 0 else []
    return {
        "online_concurrency": concurrency,
        "variant": variant,
        "engine": ENGINE,
        "batch_raw_per_s": raw_rate,
        "batch_service_per_s": service_rate,
        "batch_ratio": service_rate / raw_rate,
        "online_raw_p50_ms": _percentile(raw_ms, 50),
        "online_raw_p95_ms": _percentile(raw_ms, 95),
        "online_service_p50_ms": _percentile(http_ms, 50),
        "online_service_p95_ms": _percentile(http_ms, 95),
        "online_p50_ratio": _percentile(http_ms, 50) / _percentile(raw_ms, 50),
        "online_p50_overhead_ms": _percentile(http_ms, 50) - _percentile(raw_ms, 50),
        "online_p95_ratio": _percentile(http_ms, 95) / _percentile(raw_ms, 95),
        # an empty HTTP endpoint called the same way (bench/transport_floor.py): the part of the overhead
        # that is the client, loopback and process wake-ups, before any service code
        "online_floor_p50_ms": _percentile(floor_ms, 50),
        "online_p50_overhead_net_ms": _percentile(http_ms, 50) - _percentile(raw_ms, 50) - _percentile(floor_ms, 50),
        # the same against TensorFlow run with the service's settings (bench/raw_reference.py)
        "batch_raw_matched_per_s": matched_rate,
        "batch_ratio_matched": service_rate / matched_rate,
        "online_raw_matched_p50_ms": _percentile(matched_ms, 50),
        "online_raw_matched_p95_ms": _percentile(matched_ms, 95),
        "online_service_matched_pass_p50_ms": _percentile(http_matched_ms, 50),
        "online_p50_overhead_matched_ms": _percentile(http_matched_ms, 50) - _percentile(matched_ms, 50),
        "online_p95_ratio_matched": _percentile(http_matched_ms, 95) / _percentile(matched_ms, 95),
        **memory,
    }


def _print_table(results: list[dict], parse: list[dict]) -> None:
    print()
    print(f"{'variant':<10} {'raw TF/s':>9} {'job/s':>8} {'ratio':>6} | {'raw p50':>8} {'raw p95':>8} "
          f"{'svc p50':>8} {'svc p95':>8} {'p50 +ms':>8} {'floor':>6} {'net':>6} | {'peak RSS MB':>11} {'large':>13}")
    for r in results:
        large = (f"{r['large_peak_rss_mb']:>6.0f} @{r['large_instances'] // 1000}k"
                 if "large_peak_rss_mb" in r else "-")
        print(f"{r['variant']:<10} {r['batch_raw_per_s']:>9.0f} {r['batch_service_per_s']:>8.0f} "
              f"{r['batch_ratio']:>6.2f} | {r['online_raw_p50_ms']:>8.2f} {r['online_raw_p95_ms']:>8.2f} "
              f"{r['online_service_p50_ms']:>8.2f} {r['online_service_p95_ms']:>8.2f} "
              f"{r['online_p50_overhead_ms']:>8.2f} {r['online_floor_p50_ms']:>6.2f} "
              f"{r['online_p50_overhead_net_ms']:>6.2f} | "
              f"{r['peak_rss_mb']:>11.0f} {large:>13}")
    print("\nmatched raw reference (TensorFlow with the service's settings: "
          f"{service_intra_op_threads() or 'default'} intra-op thread(s), {PREDICT_IN_FLIGHT} batch calls at once):")
    print(f"{'variant':<10} {'raw TF/s':>9} {'ratio':>6} | {'raw p50':>8} {'raw p95':>8} {'p50 +ms':>8} "
          f"{'p95 x':>6}")
    for r in results:
        print(f"{r['variant']:<10} {r['batch_raw_matched_per_s']:>9.0f} {r['batch_ratio_matched']:>6.2f} | "
              f"{r['online_raw_matched_p50_ms']:>8.2f} {r['online_raw_matched_p95_ms']:>8.2f} "
              f"{r['online_p50_overhead_matched_ms']:>8.2f} {r['online_p95_ratio_matched']:>6.2f}")
    print("floor: an empty HTTP endpoint called the same way (client, loopback, wake-ups); net = p50 +ms - floor")
    print("\ngoals: batch ratio >= " + ", ".join(f"{v} {g:.2f}" for v, g in GOALS.items())
          + " (job createTime->endTime, GCS in and out included); online p50 overhead <= 1 ms, "
          "p95 <= 2x raw p95; peak RSS flat with input size")
    if parse:
        print("\nDAG parse (fresh interpreter per file, DagBag only):")
        for row in parse:
            detail = (f"cpu {row['cpu_s']:.2f} s, wall {row['wall_s']:.2f} s, {row['dags']} DAG(s), "
                      f"{row['import_errors']} import error(s)") if "error" not in row else row["error"]
            print(f"  {row['file']:<24} {detail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="alternating batch rounds; medians are reported")
    parser.add_argument("--online-requests", type=int, default=300)
    parser.add_argument("--variants", default="b64,instances")
    parser.add_argument("--concurrency-variants", default="b64",
                        help="variants whose online path is also driven by many connections (wrk)")
    parser.add_argument("--concurrency-seconds", type=float, default=5,
                        help="seconds per connection level (and as long for raw TF beside it; 0 skips)")
    parser.add_argument("--memory-instances", type=int, default=50_000,
                        help="one more job per variant on this many instances, for peak RSS (0: skip)")
    parser.add_argument("--no-dag-parse", dest="dag_parse", action="store_false", help="skip DAG parse timing")
    parser.add_argument("--beam-modes", default="in_process,multi_processing",
                        help="beam engine modes to measure beside the local engine (bench/beam_engine.py; '' skips)")
    parser.add_argument("--beam-instances", type=int, default=8192)
    parser.add_argument("--beam-rounds", type=int, default=3)
    parser.add_argument("--beam-large-instances", type=int, default=65_536,
                        help="one more job per engine this large: start-up vs steady state (0 skips)")
    parser.add_argument("--no-replicas", dest="replicas", action="store_false",
                        help="skip the replicas section (PostgreSQL beside SQLite, take-over, claims)")
    parser.add_argument("--output", type=Path,
                        default=Path(os.environ.get("STATE_DIR", ".state")) / "bench" / "latest.json")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    gcs_port, args.ml_port = devstack.free_port(), devstack.free_port()
    gcs_host = f"http://127.0.0.1:{gcs_port}"
    os.environ["STORAGE_EMULATOR_HOST"] = gcs_host
    gcs_server = devstack.gcs_emulator(port=gcs_port, data_dir=None, log_path=workdir / "gcs.log").start()
    token_file = devstack.service_token_file(workdir)
    os.environ["ML_ENGINE_TOKEN"] = token_file.read_text().strip()
    ml_server = devstack.ml_service(port=args.ml_port, state_dir=workdir / "state", gcs_host=gcs_host,
                                    log_path=workdir / "ml.log", token_file=token_file).start(timeout=120)
    try:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        bucket = storage.Client(project=PROJECT, credentials=AnonymousCredentials()).create_bucket(BUCKET)
        api = devstack.ml_api(f"http://127.0.0.1:{args.ml_port}/")
        print(f"bench: {args.instances} instances, batch size {args.batch_size}, {args.image_size}px images, "
              f"{args.rounds} alternating rounds, {os.cpu_count()} CPUs, engine {ENGINE}")
        results = [bench_variant(v, args, api, bucket, ml_server, workdir) for v in args.variants.split(",")]
        beam = bench_beam_engine(args, api=api, bucket=bucket, workdir=workdir, gcs_host=gcs_host,
                                 token_file=token_file, local_server=ml_server, bucket_name=BUCKET,
                                 deploy=_deploy, job_seconds=_job_seconds, raw_seconds=_raw_batch_seconds,
                                 export=_export, make_instances=_instances, images=_images) \
            if args.beam_modes else {}
        replicas = {}
        if args.replicas:
            b64 = _instances("b64", _images(4, args.image_size))
            replicas = bench_replicas(args, bucket=bucket, workdir=workdir, gcs_host=gcs_host, token_file=token_file,
                                      sqlite_port=args.ml_port, model="bench_b64", model_dir=workdir / "b64",
                                      deploy=_deploy, instance=b64[0],
                                      input_uri=_upload_lines(bucket, "inputs/replicas.json", b64, 8192))
        service_hwm_mb = hwm_mb(ml_server.process.pid)
    finally:
        ml_server.stop()
        gcs_server.stop()
    parse = parse_times() if args.dag_parse else []
    _print_table(results, parse)
    concurrency = [row for r in results for row in r.pop("online_concurrency")]
    print_concurrency_table(concurrency)
    if beam:
        print_beam_table(beam)
    if replicas:
        print_replicas_table(replicas)
    report = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "instances": args.instances,
        "memory_instances": args.memory_instances,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "rounds": args.rounds,
        "online_requests": args.online_requests,
        "engine": ENGINE,
        # the service's TensorFlow setting and batch concurrency: the "matched" reference uses them too,
        # the plain raw reference keeps TensorFlow's defaults, one call at a time
        "service_intra_op_threads": service_intra_op_threads(),
        "predict_in_flight": PREDICT_IN_FLIGHT,
        "service_lifetime_peak_rss_mb": service_hwm_mb,
        "variants": {r["variant"]: r for r in results},
        "online_concurrency": concurrency,
        "dag_parse": parse,
        "beam_engine": beam,
        "replicas": replicas,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {args.output}")


if __name__ == "__main__":
    main()
