"""``python -m include.local_platform``: run the local ml/v1 service."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import uvicorn

from include.local_platform.api.http_protocol import HeaderDeadlineProtocol
from include.local_platform.api.security import Guard, read_token
from include.local_platform.app import create_app
from include.local_platform.serving.batching import BatchingOptions
from include.local_platform.state.database import describe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A local service speaking Google's ml/v1 REST API.")
    parser.add_argument("--host", default=os.environ.get("ML_ENGINE_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("ML_PORT", "8780")))
    parser.add_argument("--state-dir", type=Path,
                        default=Path(os.environ.get("ML_ENGINE_STATE_DIR", ".state/ml_engine")))
    parser.add_argument("--log-level", default=os.environ.get("ML_ENGINE_LOG_LEVEL", "INFO"))
    parser.add_argument("--token-file", type=Path, default=None,
                        help="file holding the bearer token /v1 and /_local require (else ML_ENGINE_TOKEN; "
                             "neither: anonymous, with a warning)")
    parser.add_argument("--allowed-hosts", default=os.environ.get("ML_ENGINE_ALLOWED_HOSTS", ""),
                        help="comma-separated host names the Host header may carry besides loopback names and "
                             "--host (env ML_ENGINE_ALLOWED_HOSTS)")
    parser.add_argument("--enable-faults", action="store_true",
                        default=os.environ.get("ML_ENGINE_ENABLE_FAULTS", "") == "1",
                        help="serve the /_local/faults test switch (env ML_ENGINE_ENABLE_FAULTS=1)")
    parser.add_argument("--batch-engine", choices=("local", "beam"),
                        default=os.environ.get("ML_ENGINE_BATCH_ENGINE", "local"),
                        help="batch prediction engine: local (in process, the default) or beam (Apache Beam "
                             "RunInference on the runner ML_ENGINE_BEAM_OPTIONS names; env ML_ENGINE_BATCH_ENGINE)")
    parser.add_argument("--beam-options", default=os.environ.get("ML_ENGINE_BEAM_OPTIONS", ""),
                        help="pipeline options of the beam engine, e.g. '--runner=DataflowRunner --project=P "
                             "--region=R --temp_location=gs://B/tmp' (env ML_ENGINE_BEAM_OPTIONS)")
    parser.add_argument("--intra-op-threads", type=int,
                        default=int(os.environ.get("ML_ENGINE_INTRA_OP_THREADS", "1")),
                        help="threads TensorFlow gives one op (env ML_ENGINE_INTRA_OP_THREADS; default 1, as on "
                             "ml/v1's one-vCPU mls1-c1-m2 nodes; 0 keeps TensorFlow's own choice, all cores). Batch "
                             "jobs keep one call in flight per core instead (docs/benchmarks.md)")
    parser.add_argument("--vertex-port", type=int,
                        default=int(os.environ["ML_ENGINE_VERTEX_PORT"]) if os.environ.get("ML_ENGINE_VERTEX_PORT")
                        else None,
                        help="also serve Vertex AI's gRPC API (TLS, docs/vertex-ai.md) on this port (env "
                             "ML_ENGINE_VERTEX_PORT; default: not served)")
    parser.add_argument("--database-url", default=os.environ.get("ML_ENGINE_DATABASE_URL", ""),
                        help="the service's state: sqlite:///PATH (default: STATE_DIR/state.sqlite) or "
                             "postgresql://USER@HOST:PORT/DB, which several replicas can share (env "
                             "ML_ENGINE_DATABASE_URL; docs/replicas.md)")
    parser.add_argument("--database-url-file", type=Path,
                        default=Path(os.environ["ML_ENGINE_DATABASE_URL_FILE"])
                        if os.environ.get("ML_ENGINE_DATABASE_URL_FILE") else None,
                        help="a file holding the database URL (owner-only, like --token-file): keeps its password "
                             "out of the environment and the command line (env ML_ENGINE_DATABASE_URL_FILE)")
    parser.add_argument("--artifact-uri", default=os.environ.get("ML_ENGINE_ARTIFACT_URI", ""),
                        help="gs://BUCKET/PREFIX where deployed models are kept for every replica (env "
                             "ML_ENGINE_ARTIFACT_URI; required with a PostgreSQL database)")
    try:
        defaults = BatchingOptions.from_environment()
    except ValueError as error:
        parser.error(str(error))
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size,
                        help="online predict: instances joined into one TensorFlow call at most, from concurrent "
                             "calls on one version (env ML_ENGINE_MAX_BATCH_SIZE; default %(default)s; 1: no "
                             "batching). A call with more instances runs alone (docs/local-service.md)")
    parser.add_argument("--batch-timeout-micros", type=int, default=defaults.batch_timeout_micros,
                        help="online predict: how long an idle queue with fewer than --max-batch-size instances "
                             "waits for more (env ML_ENGINE_BATCH_TIMEOUT_MICROS; default %(default)s: never "
                             "waits, calls that arrive during a batch form the next one)")
    parser.add_argument("--num-batch-threads", type=int, default=defaults.num_batch_threads,
                        help="online predict: batches in TensorFlow at once (env ML_ENGINE_NUM_BATCH_THREADS; "
                             "default %(default)s, twice the cores)")
    args = parser.parse_args(argv)
    if args.database_url_file is not None:
        try:
            args.database_url = read_token(args.database_url_file) or ""
        except (OSError, ValueError) as error:
            parser.error(f"--database-url-file: {error}")
    if args.database_url.startswith("postgres") and not args.artifact_uri.startswith("gs://"):
        parser.error("--database-url postgresql://... needs --artifact-uri gs://BUCKET/PREFIX: replicas load "
                     "deployed models from there")
    try:
        batching = BatchingOptions(max_batch_size=args.max_batch_size,
                                   batch_timeout_micros=args.batch_timeout_micros,
                                   num_batch_threads=args.num_batch_threads)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.intra_op_threads > 0:  # read once, when TensorFlow starts (it is imported later, in the background)
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(args.intra_op_threads)
    # A batch job's predicting thread wants the GIL back the moment TensorFlow returns, while its
    # reader and writer threads hold it in short bursts; Python's default 5 ms turn starves it.
    sys.setswitchinterval(float(os.environ.get("ML_ENGINE_SWITCH_INTERVAL_S", "0.0005")))
    state_dir = args.state_dir.resolve()
    logging.getLogger("local_platform").info(
        "ml/v1 service on http://%s:%d/ (state in %s, database %s, GCS %s, batch engine %s)", args.host, args.port,
        state_dir, describe(args.database_url) if args.database_url else "SQLite in the state dir",
        os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com", args.batch_engine)
    # A long keep-alive: httplib2 (googleapiclient) reuses idle connections and fails on a closed one.
    guard = Guard.from_settings(token=read_token(args.token_file), bind_host=args.host,
                                allowed_hosts=args.allowed_hosts)
    app = create_app(state_dir, guard=guard, enable_faults=args.enable_faults, batch_engine=args.batch_engine,
                     beam_options=args.beam_options, vertex_port=args.vertex_port, vertex_host=args.host,
                     batching=batching, database_url=args.database_url, artifact_uri=args.artifact_uri)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, timeout_keep_alive=600,
                log_level=args.log_level.lower(), http=HeaderDeadlineProtocol)


if __name__ == "__main__":
    main()
