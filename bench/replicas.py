"""`make bench`, replicas section: the service on PostgreSQL beside SQLite, take-over time, claim throughput.

Three figures (issue 30), all against a real PostgreSQL server started here:
- online p50 of one-instance predict calls on a replica whose state is in PostgreSQL, interleaved call by
  call with the main (SQLite) service on the same model: the predict path must not wait on the database;
- take-over: two replicas on one database, a batch job paused on the one holding it, that replica killed
  (kill -9); seconds until the other holds the job's lease (lease expiry + the next take-over pass) and until
  the job has succeeded there;
- claims per second: 4 processes racing to claim the same names (each in its own order), 4 on names of
  their own, and 1 alone.
Results go to `latest.json` under "replicas".
"""

from __future__ import annotations

import http.client
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools import devstack
from tools.postgres import PostgresServer

PROJECT = "bench-project"
LEASE_S = 5
CLAIM_NAMES = 4000
_CLAIMER = (
    "import json, random, sys, time\n"
    "from include.local_platform.state.store import Store\n"
    "from include.local_platform.state.leases import Leases\n"
    "leases = Leases(Store(sys.argv[1]), sys.argv[2], 600)\n"
    "names = [f'claim-{sys.argv[4]}-{i}' for i in range(int(sys.argv[5]))]\n"
    "random.Random(sys.argv[2]).shuffle(names)\n"
    "time.sleep(max(0.0, float(sys.argv[3]) - time.time()))\n"
    "started = time.perf_counter()\n"
    "won = sum(1 for name in names if leases.claim(name, 'batch'))\n"
    "print(json.dumps({'won': won, 'seconds': time.perf_counter() - started}))\n")


def _replica(name: str, workdir: Path, gcs_host: str, token_file: Path, database_url: str,
             artifact_uri: str) -> tuple[devstack.LocalProcess, int]:
    port = devstack.free_port()
    server = devstack.ml_service(port=port, state_dir=workdir / f"state_{name}", gcs_host=gcs_host,
                                 log_path=workdir / f"ml_{name}.log", token_file=token_file, enable_faults=True,
                                 database_url=database_url, artifact_uri=artifact_uri)
    server.env.update(ML_ENGINE_LEASE_SECONDS=str(LEASE_S), ML_ENGINE_REPLICA_ID=name)
    return server.start(timeout=120), port


def _post(port: int, path: str, body: dict | None, method: str = "POST") -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(method, path, body=None if body is None else json.dumps(body),
                       headers={"Content-Type": "application/json", **devstack.auth_headers()})
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"{method} {path}: {response.status}")


def _predict_ms(port: int, model: str, body: bytes) -> callable:
    connection = http.client.HTTPConnection("127.0.0.1", port)
    path = f"/v1/projects/{PROJECT}/models/{model}:predict"
    headers = {"Content-Type": "application/json", **devstack.auth_headers()}

    def call() -> float:
        started = time.perf_counter()
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200 or b'"predictions"' not in payload[:40]:
            raise RuntimeError(f"predict failed: {response.status} {payload[:200]!r}")
        return (time.perf_counter() - started) * 1000

    return call


def _claims_per_second(database_url: str, claimers: int, run: str, *, shared: bool = True) -> float:
    """Claims won per second by ``claimers`` processes: all racing for the same names (``shared``: each name
    won once, the others' tries lost), or each on names of its own (a queue's usual case: new work)."""
    start_at = time.time() + 3  # every claimer has imported and connected by then
    processes = [subprocess.Popen([sys.executable, "-c", _CLAIMER, database_url, f"claimer-{run}-{i}",
                                   str(start_at), run if shared else f"{run}{i}", str(CLAIM_NAMES)],
                                  stdout=subprocess.PIPE, text=True, cwd=devstack.PROJECT_ROOT)
                 for i in range(claimers)]
    outcomes = [json.loads(process.communicate(timeout=600)[0]) for process in processes]
    won = sum(outcome["won"] for outcome in outcomes)
    expected = CLAIM_NAMES if shared else CLAIM_NAMES * claimers
    if won != expected:
        raise RuntimeError(f"{claimers} claimers won {won} of {expected} names: each must be won once")
    return won / max(outcome["seconds"] for outcome in outcomes)


def _holder(database_url: str, name: str, timeout: float = 60) -> str:
    import psycopg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT owner, expires > extract(epoch from clock_timestamp()) FROM leases "
                               "WHERE name = %s", (name,)).fetchone()
        if row and row[1]:
            return row[0]
        time.sleep(0.05)
    raise TimeoutError(f"nobody holds {name}")


def bench_replicas(args, *, bucket, workdir: Path, gcs_host: str, token_file: Path, sqlite_port: int,
                   model: str, model_dir: Path, deploy, instance: dict, input_uri: str) -> dict:
    """The three figures above; `deploy` and the model are the main bench's (same SavedModel on both stores)."""
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="bench-pg-"))).start()
    replicas = {}
    try:
        database_url = server.create_database("bench_replicas")
        artifact_uri = f"gs://{bucket.name}/artifacts"
        for name in ("replica-a", "replica-b"):
            replicas[name] = _replica(name, workdir, gcs_host, token_file, database_url, artifact_uri)
        api_a = devstack.ml_api(f"http://127.0.0.1:{replicas['replica-a'][1]}/")
        deploy(api_a, bucket, model, model_dir)
        body = json.dumps({"instances": [instance]}).encode()
        sqlite_call = _predict_ms(sqlite_port, model, body)
        postgres_call = _predict_ms(replicas["replica-b"][1], model, body)  # loads its copy from the store
        for _ in range(20):
            sqlite_call(), postgres_call()
        sqlite_ms, postgres_ms = [], []
        for _ in range(args.online_requests):  # call by call: load spikes hit both alike
            sqlite_ms.append(sqlite_call())
            postgres_ms.append(postgres_call())
        online = {"sqlite_p50_ms": statistics.median(sqlite_ms), "postgresql_p50_ms": statistics.median(postgres_ms),
                  "postgresql_minus_sqlite_p50_ms": statistics.median(postgres_ms) - statistics.median(sqlite_ms),
                  "sqlite_p99_ms": statistics.quantiles(sqlite_ms, n=100)[98],
                  "postgresql_p99_ms": statistics.quantiles(postgres_ms, n=100)[98], "calls": args.online_requests}

        takeover = _takeover(replicas, database_url, model, input_uri, bucket)
        claims = {"names": CLAIM_NAMES, "one_claimer_per_s": _claims_per_second(database_url, 1, "one"),
                  "four_claimers_per_s": _claims_per_second(database_url, 4, "four"),
                  "four_claimers_own_names_per_s": _claims_per_second(database_url, 4, "own", shared=False)}
    finally:
        for process, _ in replicas.values():
            process.stop()
        server.stop()
    return {"lease_seconds": LEASE_S, "online": online, "takeover": takeover, "claims": claims}


def _takeover(replicas: dict, database_url: str, model: str, input_uri: str, bucket) -> dict:
    for _, port in replicas.values():
        _post(port, "/_local/faults", {"delay_at": "batch.predicting", "after": 1, "seconds": 120})
    api_a = devstack.ml_api(f"http://127.0.0.1:{replicas['replica-a'][1]}/")
    job_id = f"bench_takeover_{random.randrange(1 << 30)}"
    name = f"projects/{PROJECT}/jobs/{job_id}"
    api_a.projects().jobs().create(parent=f"projects/{PROJECT}", body={"jobId": job_id, "predictionInput": {
        "modelName": f"projects/{PROJECT}/models/{model}", "dataFormat": "JSON", "inputPaths": [input_uri],
        "outputPath": f"gs://{bucket.name}/out/takeover", "region": "us-central1", "batchSize": 64}}).execute()
    holder = _holder(database_url, name)
    survivor = next(replica for replica in replicas if replica != holder)
    _post(replicas[survivor][1], "/_local/faults", None, method="DELETE")
    time.sleep(1.0)  # the job is paused mid-prediction on the holder
    killed = time.monotonic()
    replicas[holder][0].stop(sig=signal.SIGKILL)
    while _holder(database_url, name) != survivor:
        time.sleep(0.05)
    taken = time.monotonic() - killed
    api = devstack.ml_api(f"http://127.0.0.1:{replicas[survivor][1]}/")
    while (job := api.projects().jobs().get(name=name).execute())["state"] not in ("SUCCEEDED", "FAILED"):
        time.sleep(0.1)
    if job["state"] != "SUCCEEDED":
        raise RuntimeError(f"the job taken over did not succeed: {job}")
    return {"dead_to_taken_s": taken, "dead_to_succeeded_s": time.monotonic() - killed,
            "instances": int(job["predictionOutput"]["predictionCount"])}


def print_replicas_table(result: dict) -> None:
    online, takeover, claims = result["online"], result["takeover"], result["claims"]
    print(f"\nreplicas (PostgreSQL 15 on loopback, lease {result['lease_seconds']:.0f} s)")
    print(f"  online p50, one instance: SQLite {online['sqlite_p50_ms']:.2f} ms, PostgreSQL "
          f"{online['postgresql_p50_ms']:.2f} ms (difference {online['postgresql_minus_sqlite_p50_ms']:+.2f} ms; "
          f"p99 {online['sqlite_p99_ms']:.2f} / {online['postgresql_p99_ms']:.2f} ms)")
    print(f"  take-over after kill -9: the other replica holds the job after {takeover['dead_to_taken_s']:.1f} s, "
          f"job done after {takeover['dead_to_succeeded_s']:.1f} s ({takeover['instances']} instances)")
    print(f"  claims won: {claims['one_claimer_per_s']:.0f}/s with 1 claimer; with 4: "
          f"{claims['four_claimers_per_s']:.0f}/s racing for the same {claims['names']} names, "
          f"{claims['four_claimers_own_names_per_s']:.0f}/s on names of their own")
