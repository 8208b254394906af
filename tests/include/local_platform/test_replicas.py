"""Replicas on one PostgreSQL database: shared resources, claimed work, take-over after kill -9, cancels.

Two services (``replica-a``, ``replica-b``) run on one real PostgreSQL server,
each with its own state directory, sharing the GCS artifact store; leases last
3 s so a dead replica's work is taken over within seconds. Which replica holds a
piece of work is read from the ``leases`` table, as an operator would.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PROJECT_ROOT, ServiceHandle, session_token_file
from tests.include.local_platform.conftest import PARENT, post_fault, unique, wait_job, wait_operation
from tests.include.local_platform.workers.test_batch import prediction_input, read_outputs, start_job
from tools import devstack

LEASE_S = 3


@pytest.fixture(autouse=True)
def _once(request):
    if request.config.getoption("--database") == "postgresql":
        pytest.skip("runs in the default pass already (it starts its own PostgreSQL replicas)")


@dataclass
class Replicas:
    handles: dict[str, ServiceHandle]
    states: dict[str, Path]
    database_url: str
    artifact_uri: str

    def api(self, replica: str):
        return self.handles[replica].build_api()

    def holder(self, name: str, timeout: float = 60) -> str:
        """The replica holding ``name``'s lease (waits until somebody does)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with psycopg.connect(self.database_url) as conn:
                row = conn.execute("SELECT owner FROM leases WHERE name = %s", (name,)).fetchone()
            if row:
                return row[0]
            time.sleep(0.1)
        raise TimeoutError(f"nobody holds {name}")

    def other(self, replica: str) -> str:
        return next(name for name in self.handles if name != replica)

    def kill(self, replica: str) -> None:
        self.handles[replica].server.stop(sig=signal.SIGKILL)

    def start(self, replica: str) -> None:
        self.handles[replica].server.start(timeout=120)


@pytest.fixture(scope="module")
def replicas(gcs_emulator, bucket, postgres_server, tmp_path_factory):
    name = f"replicas_{uuid.uuid4().hex[:6]}"
    database_url = postgres_server.create_database(name)
    artifact_uri = f"gs://{bucket.name}/artifacts/{name}"
    token_file = session_token_file()
    handles, states = {}, {}
    for replica in ("replica-a", "replica-b"):
        state = states[replica] = tmp_path_factory.mktemp(replica)
        port = devstack.free_port()
        server = devstack.ml_service(port=port, state_dir=state, gcs_host=gcs_emulator, log_path=state / "service.log",
                                     token_file=token_file, enable_faults=True, database_url=database_url,
                                     artifact_uri=artifact_uri)
        server.env.update(ML_ENGINE_LEASE_SECONDS=str(LEASE_S), ML_ENGINE_REPLICA_ID=replica)
        handles[replica] = ServiceHandle(server=server.start(timeout=120), port=port,
                                         token=token_file.read_text().strip())
    yield Replicas(handles, states, database_url, artifact_uri)
    for handle in handles.values():
        handle.server.stop()


def deploy_through(api, model_uri: str, model: str | None = None, version: str = "v1") -> tuple[str, str]:
    model = model or unique("replicated")
    if model not in {m["name"].rsplit("/", 1)[1] for m in api.projects().models().list(parent=PARENT).execute()
                     .get("models", [])}:
        api.projects().models().create(parent=PARENT, body={"name": model}).execute()
    operation = api.projects().models().versions().create(
        parent=f"{PARENT}/models/{model}",
        body={"name": version, "deploymentUri": model_uri, "runtimeVersion": "2.11"}).execute()
    return model, operation["name"]


def predict(handle: ServiceHandle, name: str, instances: list) -> dict:
    request = urllib.request.Request(f"{handle.url}v1/{name}:predict", method="POST",
                                     data=json.dumps({"instances": instances}).encode(),
                                     headers={**handle.headers, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_created_through_one_served_by_the_other(replicas, model_uris):
    api_a, api_b = replicas.api("replica-a"), replicas.api("replica-b")
    model, operation = deploy_through(api_a, model_uris["tiny"])
    assert wait_operation(api_a, operation)["response"]["state"] == "READY"
    assert api_b.projects().models().get(name=f"{PARENT}/models/{model}").execute()["defaultVersion"]["name"] \
        .endswith("/versions/v1")
    # served by B from the artifact store (B never saw A's directory)
    answer = predict(replicas.handles["replica-b"], f"{PARENT}/models/{model}", [{"x": [1, 2], "key": "k"}])
    assert answer == {"predictions": [{"y": 6.0, "key": "k"}]}
    fetched = list(replicas.states["replica-b"].glob(f"artifacts/*/{model}/*/saved_model.pb"))
    assert len(fetched) == 1


def test_set_default_through_one_is_what_the_other_serves_next(replicas, model_uris):
    api_a, handle_b = replicas.api("replica-a"), replicas.handles["replica-b"]
    model, first = deploy_through(api_a, model_uris["tiny"])
    wait_operation(api_a, first)
    _, second = deploy_through(api_a, model_uris["tiny3"], model, "v2")
    wait_operation(api_a, second)
    name = f"{PARENT}/models/{model}"
    assert predict(handle_b, name, [{"x": [1, 1], "key": "k"}])["predictions"][0]["y"] == 4.0  # v1: 2 * sum
    for version, expected in (("v2", 6.0), ("v1", 4.0), ("v2", 6.0)):
        api_a.projects().models().versions().setDefault(name=f"{name}/versions/{version}", body={}).execute()
        assert predict(handle_b, name, [{"x": [1, 1], "key": "k"}])["predictions"][0]["y"] == expected
    # a delete through B: A answers 404 at once
    api_a.projects().models().versions().setDefault(name=f"{name}/versions/v1", body={}).execute()
    wait_operation(replicas.api("replica-b"), replicas.api("replica-b").projects().models().versions()
                   .delete(name=f"{name}/versions/v2").execute()["name"])
    with pytest.raises(urllib.error.HTTPError) as gone:
        predict(replicas.handles["replica-a"], f"{name}/versions/v2", [{"x": [1, 1], "key": "k"}])
    assert gone.value.code == 404


def test_two_replicas_racing_for_the_same_work_one_wins_each_time(replicas):
    """Two processes claim the same 1,000 names over and over, each in its own order, for the same 2 s: every
    name has exactly one winner, and both were claiming at the same time."""
    code = (
        "import json, random, sys, time\n"
        "from include.local_platform.state.store import Store\n"
        "from include.local_platform.state.leases import Leases\n"
        "leases = Leases(Store(sys.argv[1]), sys.argv[2], 60)\n"
        "names = [f'race-{sys.argv[4]}-{i}' for i in range(1000)]\n"
        "random.Random(sys.argv[2]).shuffle(names)\n"
        "time.sleep(max(0.0, float(sys.argv[3]) - time.time()))\n"
        "started, won, tries = time.time(), set(), 0\n"
        "while time.time() < float(sys.argv[3]) + 2:\n"
        "    for name in names:\n"
        "        tries += 1\n"
        "        if leases.claim(name, 'batch'):\n"
        "            won.add(name.rsplit('-', 1)[1])\n"
        "print(json.dumps({'won': sorted(won), 'tries': tries, 'started': started, 'ended': time.time()}))\n")
    run = uuid.uuid4().hex[:6]
    start_at = time.time() + 5
    processes = [subprocess.Popen([sys.executable, "-c", code, replicas.database_url, owner, str(start_at), run],
                                  stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
                 for owner in ("racer-1", "racer-2")]
    reports = [json.loads(process.communicate(timeout=120)[0]) for process in processes]
    assert all(process.returncode == 0 for process in processes)
    wins = [set(report["won"]) for report in reports]
    assert wins[0] | wins[1] == {str(i) for i in range(1000)}
    assert not wins[0] & wins[1]  # never both
    overlap = min(r["ended"] for r in reports) - max(r["started"] for r in reports)
    assert overlap > 1.0, reports  # they raced: both claiming during the same second at least
    assert all(report["tries"] >= 2000 for report in reports)  # every name tried twice by each at least


def test_kill_9_of_the_replica_deploying_a_version_another_finishes_it_once(replicas, model_uris, bucket):
    for handle in replicas.handles.values():
        post_fault(handle.url, {"delay_at": "deploy.copying", "seconds": 60})
    api_a = replicas.api("replica-a")
    model, operation = deploy_through(api_a, model_uris["tiny"])
    holder = replicas.holder(operation)  # a deployment's lease is its operation's
    survivor = replicas.other(holder)
    post_fault(replicas.handles[survivor].url, None)
    killed_at = time.monotonic()
    replicas.kill(holder)
    try:
        done = wait_operation(replicas.api(survivor), operation, timeout=120)
        taken_over_in = time.monotonic() - killed_at
        assert done["response"]["state"] == "READY"
        prefix = f"{replicas.artifact_uri.split('/', 3)[3]}/artifacts/test-project/{model}/"
        copies = {blob.name[len(prefix):].split("/")[0] for blob in bucket.list_blobs(prefix=prefix)}
        assert len(copies) == 1, copies  # one artifact folder: the survivor's
        assert LEASE_S - 1.5 < taken_over_in < 60  # not before the dead holder's lease ran out
        answer = predict(replicas.handles[survivor], f"{PARENT}/models/{model}", [{"x": [1, 2], "key": "k"}])
        assert answer["predictions"][0]["y"] == 6.0
    finally:
        replicas.start(holder)


def _paused_batch_job(replicas: Replicas, model_uris, bucket, prefix: str, count: int, after: int,
                      seconds: float) -> tuple[str, str]:
    """A batch job of ``count`` instances that pauses mid-prediction on whichever replica takes it; (job id,
    that replica). The pause is armed on both replicas: either may win the job."""
    api_a = replicas.api("replica-a")
    model, operation = deploy_through(api_a, model_uris["tiny"])
    wait_operation(api_a, operation)
    bucket.blob(f"{prefix}/in/part-0.json").upload_from_string(
        "\n".join(json.dumps({"x": [i, 1], "key": f"k{i}"}) for i in range(count)))
    for handle in replicas.handles.values():
        post_fault(handle.url, {"delay_at": "batch.predicting", "after": after, "seconds": seconds})
    job_id = start_job(api_a, prediction_input({"modelName": f"{PARENT}/models/{model}"},
                                               [f"gs://{bucket.name}/{prefix}/in/*"],
                                               f"gs://{bucket.name}/{prefix}/out", batchSize=16))
    return job_id, replicas.holder(f"{PARENT}/jobs/{job_id}")


def test_kill_9_of_the_replica_running_a_batch_job_another_reruns_it_once(replicas, model_uris, bucket, gcs_prefix):
    job_id, holder = _paused_batch_job(replicas, model_uris, bucket, gcs_prefix, 400, after=2, seconds=60)
    survivor = replicas.other(holder)
    post_fault(replicas.handles[survivor].url, None)
    replicas.kill(holder)
    try:
        job = wait_job(replicas.api(survivor), job_id, timeout=120)
        assert job["state"] == "SUCCEEDED", job
        assert job["predictionOutput"]["predictionCount"] == "400"
        results, _, _ = read_outputs(bucket, f"{gcs_prefix}/out")
        keys = [result["key"] for result in results]
        assert sorted(keys) == sorted(f"k{i}" for i in range(400))  # every key exactly once
    finally:
        replicas.start(holder)


def test_a_cancel_sent_to_the_replica_not_running_the_job_stops_it(replicas, model_uris, bucket, gcs_prefix):
    job_id, holder = _paused_batch_job(replicas, model_uris, bucket, gcs_prefix, 200, after=1, seconds=30)
    other = replicas.other(holder)
    for handle in replicas.handles.values():
        post_fault(handle.url, None)
    asked = time.monotonic()
    replicas.api(other).projects().jobs().cancel(name=f"{PARENT}/jobs/{job_id}", body={}).execute()
    job = wait_job(replicas.api(other), job_id, timeout=60)
    assert job["state"] == "CANCELLED", job
    assert time.monotonic() - asked < 30 - 5  # the holder noticed, not the pause running out


def test_kill_9_of_the_replica_watching_a_training_job_another_finishes_it(replicas, tiny_trainer_package, bucket,
                                                                            gcs_prefix):
    api_a = replicas.api("replica-a")
    job_id = unique("train")
    job_dir = f"gs://{bucket.name}/{gcs_prefix}/job"
    api_a.projects().jobs().create(parent=PARENT, body={"jobId": job_id, "trainingInput": {
        "packageUris": [tiny_trainer_package], "pythonModule": "tinytrainer.task", "region": "us-central1",
        "jobDir": job_dir, "args": ["--seconds", "12"]}}).execute()
    name = f"{PARENT}/jobs/{job_id}"
    wait_job(api_a, job_id, timeout=120, states=("RUNNING",))
    holder = replicas.holder(name)
    survivor = replicas.other(holder)
    replicas.kill(holder)
    try:
        job = wait_job(replicas.api(survivor), job_id, timeout=180)
        assert job["state"] == "SUCCEEDED", job
        assert bucket.blob(f"{gcs_prefix}/job/result.json").exists()
        log_text = _training_log(replicas.handles[survivor], job_id)
        assert log_text.count("tiny trainer pid=") == 1  # one trainer run, watched to its end by the survivor
        assert "re-attached to the trainer" in log_text
    finally:
        replicas.start(holder)


def _training_log(handle: ServiceHandle, job_id: str) -> str:
    request = urllib.request.Request(f"{handle.url}_local/projects/test-project/jobs/{job_id}/logs?offset=0",
                                     headers=handle.headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return "\n".join(json.loads(response.read())["lines"])


def _load_while_one_restarts(replicas: Replicas, name: str, target) -> list[tuple[str, str]]:
    """Eight clients call ``target(index, count)`` (a handle) for ~10 s; replica-b is killed (kill -9) at 3 s and
    started again at 5 s. Each outcome: ok, wrong, retryable (refused or reset connection, 502/503/504)."""
    outcomes: list[tuple[str, str]] = []
    stop = threading.Event()

    def client(index: int) -> None:
        count = 0
        while not stop.is_set():
            count += 1
            handle = target(index, count)
            try:
                answer = predict(handle, name, [{"x": [index, count], "key": str(count)}])
                right = answer == {"predictions": [{"y": 2.0 * (index + count), "key": str(count)}]}
                outcomes.append((handle.url, "ok" if right else f"wrong {answer}"))
            except urllib.error.HTTPError as error:
                outcomes.append((handle.url, "retryable" if error.code in (502, 503, 504) else f"HTTP {error.code}"))
            except (ConnectionError, urllib.error.URLError, TimeoutError, http.client.HTTPException):
                outcomes.append((handle.url, "retryable"))
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    replicas.kill("replica-b")
    time.sleep(2)
    replicas.start("replica-b")
    time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def test_load_over_two_replicas_while_one_is_killed_and_restarted(replicas, model_uris):
    """Clients alternate between the replicas themselves: every answer is right, every failure retryable, both
    replicas answer again after the restart, and nothing is lost."""
    api_a = replicas.api("replica-a")
    model, operation = deploy_through(api_a, model_uris["tiny"])
    wait_operation(api_a, operation)
    name = f"{PARENT}/models/{model}"
    handles = list(replicas.handles.values())
    outcomes = _load_while_one_restarts(replicas, name, lambda index, count: handles[(index + count) % 2])
    kinds = {outcome for _, outcome in outcomes}
    print(f"direct: {sum(o == 'ok' for _, o in outcomes)} answered right, "
          f"{sum(o == 'retryable' for _, o in outcomes)} retryable failures")
    assert kinds <= {"ok", "retryable"}, kinds - {"ok", "retryable"}
    assert {url for url, outcome in outcomes if outcome == "ok"} == {handle.url for handle in handles}
    assert sum(1 for _, outcome in outcomes if outcome == "ok") > 100
    for replica in replicas.handles:  # nothing lost: the model and its version as they were, through both
        assert replicas.api(replica).projects().models().get(name=name).execute()["defaultVersion"]["name"] \
            .endswith("/versions/v1")


@pytest.fixture
def load_balancer(replicas, tmp_path):
    """HAProxy with compose's own config (tools/haproxy/ml-engine.cfg), its servers pointed at the two replicas
    on loopback instead of compose's service names (no Docker DNS here)."""
    import re
    import shutil

    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        pytest.fail("HAProxy is missing: `make test` installs Debian's haproxy (make loadbalancer)")
    config = (PROJECT_ROOT / "tools" / "haproxy" / "ml-engine.cfg").read_text()
    port = devstack.free_port()
    config = re.sub(r"(?ms)^resolvers docker\n(    .*?\n)+", "", config).replace(" resolvers docker", "")
    config = config.replace("bind :8780", f"bind 127.0.0.1:{port}")
    for server, replica in (("ml-engine-1", "replica-a"), ("ml-engine-2", "replica-b")):
        address = f"127.0.0.1:{replicas.handles[replica].port}"
        config, replaced = re.subn(rf"(server {server}) {server}:8780", rf"\1 {address}", config)
        assert replaced == 1, config
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    process = subprocess.Popen([haproxy, "-f", str(path), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    handle = ServiceHandle(server=replicas.handles["replica-a"].server, port=port,
                           token=replicas.handles["replica-a"].token)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/haproxy-healthz", timeout=2).read()
            break
        except (OSError, urllib.error.URLError):
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()
            time.sleep(0.2)
    yield handle
    process.terminate()
    process.wait(timeout=10)


def test_load_through_haproxy_while_one_replica_is_killed_and_restarted(replicas, load_balancer, model_uris):
    """Compose's load balancer (real HAProxy, its config) in front of both replicas: while one is killed and
    restarted, every answer is right and failures are few and retryable (only calls in flight on the dead
    replica when it died; new connections go to the live one)."""
    api_a = replicas.api("replica-a")
    model, operation = deploy_through(api_a, model_uris["tiny"])
    wait_operation(api_a, operation)
    outcomes = _load_while_one_restarts(replicas, f"{PARENT}/models/{model}", lambda index, count: load_balancer)
    kinds = [outcome for _, outcome in outcomes]
    print(f"through HAProxy: {kinds.count('ok')} answered right, {kinds.count('retryable')} retryable failures")
    assert set(kinds) <= {"ok", "retryable"}, set(kinds) - {"ok", "retryable"}
    assert kinds.count("ok") > 100
    assert kinds.count("retryable") <= 8 + kinds.count("ok") // 100, kinds.count("retryable")


def test_database_away_answers_503_and_the_replica_recovers_when_it_is_back(replicas, postgres_server, model_uris):
    """PostgreSQL stopped for real (pg_ctl stop): calls that need it answer 503 UNAVAILABLE in Google's words (a
    status clients retry), nothing crashes; once it is back, the same replica answers from its next call."""
    from googleapiclient.errors import HttpError

    api_b = replicas.api("replica-b")
    model, operation = deploy_through(replicas.api("replica-a"), model_uris["tiny"])
    wait_operation(api_b, operation)
    postgres_server.stop()
    try:
        with pytest.raises(HttpError) as away:
            api_b.projects().models().get(name=f"{PARENT}/models/{model}").execute()
        assert away.value.resp.status == 503
        assert json.loads(away.value.content)["error"] == {
            "code": 503, "message": "The service is currently unavailable.", "status": "UNAVAILABLE"}
    finally:
        postgres_server.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            assert api_b.projects().models().get(name=f"{PARENT}/models/{model}").execute()["name"].endswith(model)
            break
        except HttpError as error:
            assert error.resp.status == 503 and time.monotonic() < deadline
            time.sleep(0.2)
    answer = predict(replicas.handles["replica-a"], f"{PARENT}/models/{model}", [{"x": [1, 2], "key": "k"}])
    assert answer == {"predictions": [{"y": 6.0, "key": "k"}]}
    assert all(handle.server.process.poll() is None for handle in replicas.handles.values())
