"""`make bench`, beam section: the beam batch engine beside the local one on the same job, against raw TF.

One job (the `b64` variant, `--beam-instances` JSON lines in GCS) runs round by
round on raw TensorFlow in this process, on the local engine (the main bench
service) and on one service per Beam mode: DirectRunner in the service's own
process and, when asked, with two SDK worker processes. Medians of the job's
createTime -> endTime go into `latest.json` under "beam_engine".

Goal (issue 10): the in-process beam engine >= 0.5x raw TF. The multi-process
figure includes starting the worker processes and loading the model in each,
which dominates on a small machine; a Dataflow worker pays that once per job.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from bench.rss import PeakSampler
from tools import devstack

GOAL_IN_PROCESS = 0.5
MODES = {"in_process": "", "multi_processing": "--direct_running_mode=multi_processing --direct_num_workers=2"}


def _beam_service(mode: str, workdir: Path, gcs_host: str, token_file: Path) -> tuple[devstack.LocalProcess, int]:
    """A service whose batch engine is beam in `mode`, set by environment as compose sets it; (server, port)."""
    port = devstack.free_port()
    server = devstack.ml_service(port=port, state_dir=workdir / f"state_beam_{mode}", gcs_host=gcs_host,
                                 log_path=workdir / f"ml_beam_{mode}.log", token_file=token_file)
    server.env.update(ML_ENGINE_BATCH_ENGINE="beam", ML_ENGINE_BEAM_OPTIONS=MODES[mode])
    return server.start(timeout=120), port


def bench_beam_engine(args, *, api, bucket, workdir: Path, gcs_host: str, token_file: Path, local_server,
                      bucket_name: str, deploy, job_seconds, raw_seconds, export, make_instances,
                      images) -> dict:
    """Raw TF, the local engine and each Beam mode on the same job, alternating round by round.

    The bench's own helpers are passed in (deploy, job timing, raw timing), so both sections measure alike.
    """
    import tensorflow as tf

    variant, count = "b64", args.beam_instances
    directory = export(variant, args.image_size, workdir / "beam_model")
    signature = tf.saved_model.load(str(directory)).signatures["serving_default"]
    instances = make_instances(variant, images(count, args.image_size))
    bucket.blob("inputs/beam.json").upload_from_string("\n".join(json.dumps(i) for i in instances))
    input_uri = f"gs://{bucket_name}/inputs/beam.json"
    deploy(api, bucket, "bench_beam", directory)
    modes = [mode for mode in args.beam_modes.split(",") if mode]
    started = {mode: _beam_service(mode, workdir, gcs_host, token_file) for mode in modes}
    servers = {mode: server for mode, (server, _) in started.items()}
    try:
        apis = {mode: devstack.ml_api(f"http://127.0.0.1:{port}/") for mode, (_, port) in started.items()}
        for mode in modes:
            deploy(apis[mode], bucket, "bench_beam", directory)
        raw_seconds(signature, variant, instances[: args.batch_size * 2], args.batch_size)  # warm up
        times: dict[str, list[float]] = {"raw": [], "local": [], **{mode: [] for mode in modes}}
        for round_number in range(args.beam_rounds):
            times["raw"].append(raw_seconds(signature, variant, instances, args.batch_size))
            times["local"].append(job_seconds(api, "bench_beam", input_uri,
                                              f"gs://{bucket_name}/out/beam/local/{round_number}",
                                              args.batch_size, "beam_local", PeakSampler(local_server.process.pid)))
            for mode in modes:
                if mode == "multi_processing" and round_number > 0:
                    continue  # one round: worker start-up dominates and the box has 2 cores
                times[mode].append(job_seconds(apis[mode], "bench_beam", input_uri,
                                               f"gs://{bucket_name}/out/beam/{mode}/{round_number}",
                                               args.batch_size, f"beam_{mode}",
                                               PeakSampler(servers[mode].process.pid)))
    finally:
        for server in servers.values():
            server.stop()
    raw_rate = count / statistics.median(times["raw"])
    report = {"instances": count, "variant": variant, "batch_size": args.batch_size, "rounds": args.beam_rounds,
              "raw_per_s": raw_rate, "seconds": times}
    for engine in ("local", *modes):
        rate = count / statistics.median(times[engine])
        report[engine] = {"per_s": rate, "ratio_to_raw": rate / raw_rate, "rounds": len(times[engine])}
    return report


def print_beam_table(report: dict) -> None:
    print(f"\nbatch engines on one job ({report['instances']} {report['variant']} instances, batch size "
          f"{report['batch_size']}, medians of {report['rounds']} rounds): raw TF {report['raw_per_s']:.0f}/s")
    for engine in ("local", *MODES):
        if engine in report:
            row = report[engine]
            print(f"  {engine:<18} {row['per_s']:>8.0f} instances/s  {row['ratio_to_raw']:>5.2f}x raw TF"
                  f"  ({row['rounds']} round(s))")
    print(f"goal: beam in_process >= {GOAL_IN_PROCESS}x raw TF")
