"""`make bench`, beam section: the beam batch engine beside the local one on the same job, against raw TF.

One job (the `b64` variant, `--beam-instances` JSON lines in GCS, default 8,192) runs
round by round on raw TensorFlow in this process, on the local engine (the main
bench service) and on one service per Beam mode: DirectRunner in the service's own
process and, when asked, with two SDK worker processes. Then each runs once on
`--beam-large-instances` (default 65,536; 0 skips): the two sizes split each
engine's time into start-up (pipeline set-up, worker processes importing
TensorFlow and loading the model, the last writes) and steady state (instances/s
once running). Medians of the job's createTime -> endTime go into `latest.json`
under "beam_engine".

Goals (issue 31): in process >= 0.8x raw TF on the large job and <= 1 s over the
local engine on the small one; with two worker processes, steady state >= 0.7x
raw TF per core.
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from bench.rss import PeakSampler
from tools import devstack

GOAL_IN_PROCESS = 0.8
GOAL_FIXED_COST_S = 1.0
GOAL_STEADY_PER_CORE = 0.7
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
    """Raw TF, the local engine and each Beam mode on the same job, alternating round by round; then each once
    on the large job (`--beam-large-instances`), which splits start-up from steady state (see `_split`).

    The bench's own helpers are passed in (deploy, job timing, raw timing), so both sections measure alike.
    """
    import tensorflow as tf

    variant, count, large = "b64", args.beam_instances, args.beam_large_instances
    directory = export(variant, args.image_size, workdir / "beam_model")
    signature = tf.saved_model.load(str(directory)).signatures["serving_default"]
    pool = make_instances(variant, images(1024, args.image_size))
    instances = [dict(pool[i % len(pool)], key=f"k{i}") for i in range(max(count, large))]
    uris = {}
    for size in {count, large} - {0}:
        bucket.blob(f"inputs/beam_{size}.json").upload_from_string("\n".join(json.dumps(i)
                                                                               for i in instances[:size]))
        uris[size] = f"gs://{bucket_name}/inputs/beam_{size}.json"
    deploy(api, bucket, "bench_beam", directory)
    modes = [mode for mode in args.beam_modes.split(",") if mode]
    started = {mode: _beam_service(mode, workdir, gcs_host, token_file) for mode in modes}
    servers = {mode: server for mode, (server, _) in started.items()}
    engines = ("local", *modes)
    try:
        apis = {"local": api, **{mode: devstack.ml_api(f"http://127.0.0.1:{port}/")
                                 for mode, (_, port) in started.items()}}
        pids = {"local": local_server.process.pid, **{mode: server.process.pid for mode, server in servers.items()}}
        for mode in modes:
            deploy(apis[mode], bucket, "bench_beam", directory)
        raw_seconds(signature, variant, instances[: args.batch_size * 2], args.batch_size)  # warm up

        def job(engine: str, size: int, tag: str) -> float:
            return job_seconds(apis[engine], "bench_beam", uris[size], f"gs://{bucket_name}/out/beam/{engine}/{tag}",
                               args.batch_size, f"beam_{engine}", PeakSampler(pids[engine]))

        times: dict[str, list[float]] = {"raw": [], **{engine: [] for engine in engines}}
        for round_number in range(args.beam_rounds):
            times["raw"].append(raw_seconds(signature, variant, instances[:count], args.batch_size))
            for engine in engines:
                if engine == "multi_processing" and round_number > 0:
                    continue  # one round: worker start-up dominates and the box has 2 cores
                times[engine].append(job(engine, count, str(round_number)))
        large_times = {}
        if large:
            large_times["raw"] = raw_seconds(signature, variant, instances[:large], args.batch_size)
            for engine in engines:
                large_times[engine] = job(engine, large, "large")
    finally:
        for server in servers.values():
            server.stop()
    raw_rate = count / statistics.median(times["raw"])
    report = {"instances": count, "large_instances": large, "variant": variant, "batch_size": args.batch_size,
              "rounds": args.beam_rounds, "raw_per_s": raw_rate, "seconds": times, "large_seconds": large_times,
              "load_average": list(os.getloadavg())}
    if large:
        report["large_raw_per_s"] = large / large_times["raw"]
    for engine in engines:
        seconds = statistics.median(times[engine])
        row = {"per_s": count / seconds, "ratio_to_raw": count / seconds / raw_rate, "rounds": len(times[engine]),
               "over_local_s": seconds - statistics.median(times["local"])}
        if large:
            row.update(large_per_s=large / large_times[engine],
                       large_ratio_to_raw=large / large_times[engine] / report["large_raw_per_s"],
                       **_split(count, seconds, large, large_times[engine], report["large_raw_per_s"]))
        report[engine] = row
    return report


def _split(small: int, small_s: float, large: int, large_s: float, raw_per_s: float) -> dict:
    """Start-up and steady state from two job sizes: steady = the extra instances over the extra seconds,
    start-up = what the small job took beyond its instances at that rate (pipeline set-up, worker processes
    starting and loading the model, the last writes)."""
    steady = (large - small) / (large_s - small_s) if large_s > small_s else float("inf")
    return {"startup_s": small_s - small / steady, "steady_per_s": steady, "steady_ratio_to_raw": steady / raw_per_s}


def print_beam_table(report: dict) -> None:
    print(f"\nbatch engines on one job ({report['instances']} {report['variant']} instances, batch size "
          f"{report['batch_size']}, medians of {report['rounds']} rounds): raw TF {report['raw_per_s']:.0f}/s")
    for engine in ("local", *MODES):
        if engine in report:
            row = report[engine]
            print(f"  {engine:<18} {row['per_s']:>8.0f} instances/s  {row['ratio_to_raw']:>5.2f}x raw TF  "
                  f"{row['over_local_s']:>+6.2f} s over local  ({row['rounds']} round(s))")
    if report.get("large_instances"):
        print(f"and on {report['large_instances']} instances, once each (raw TF {report['large_raw_per_s']:.0f}/s); "
              "start-up and steady state from the two sizes:")
        for engine in ("local", *MODES):
            if engine in report:
                row = report[engine]
                split = (f"start-up {row['startup_s']:>5.1f} s, steady {row['steady_per_s']:>6.0f}/s "
                         f"({row['steady_ratio_to_raw']:.2f}x raw TF)") if row["startup_s"] >= 0 else (
                    "no start-up to split off: slower per instance on the large job (GCS uploads grow faster)")
                print(f"  {engine:<18} {row['large_per_s']:>8.0f} instances/s  {row['large_ratio_to_raw']:>5.2f}x raw"
                      f" TF   {split}")
    print(f"goals: beam in_process >= {GOAL_IN_PROCESS}x raw TF on the large job and <= {GOAL_FIXED_COST_S} s over "
          f"local on the small one; multi_processing steady state >= {GOAL_STEADY_PER_CORE}x raw TF per core")
