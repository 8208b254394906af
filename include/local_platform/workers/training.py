"""Training jobs: install the job's packages into its own directory, run ``python -m <module>`` as one process.

What the hosted service did on its master replica, on one machine: download
``packageUris`` from GCS, ``pip install`` them (here into the job's own directory,
so the service's environment never changes and TensorFlow from it is reused),
then run ``python -m <pythonModule> <args> --job-dir <jobDir>`` with
``CLOUD_ML_JOB`` and ``TF_CONFIG`` set. The trainer runs in its own session
(process group) with stdout and stderr appended to the job's log file, so the
log survives the service and a restart re-attaches to a trainer that is still
running (same pid, same start time); the exit status is written by a tiny shell
wrapper to a file, so it is known even when the service was down at the end.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from include.local_platform import gcs
from include.local_platform.context import Context, now_rfc3339, revise
from include.local_platform.errors import ApiError, invalid_argument, not_found, unimplemented
from include.local_platform.resources.names import job_name

log = logging.getLogger(__name__)

MAX_PACKAGES = 100
SCALE_TIERS = ("BASIC", "STANDARD_1", "PREMIUM_1", "BASIC_GPU", "BASIC_TPU", "CUSTOM")
MODULE_RULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
PACKAGE_FILE_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\.(tar\.gz|whl|zip|tgz)$")
LOG_NAME = "trainer.log"
EXIT_NAME = "exit_status"
POLL_S = 0.5
TERMINATE_GRACE_S = 10.0
LOG_READ_LIMIT = 1024 * 1024
#: Trainers running at once; more wait QUEUED (ml/v1 queued jobs beyond a project's quota the same way).
SLOTS = threading.BoundedSemaphore(int(os.environ.get("ML_ENGINE_TRAINING_SLOTS", "2")))
# `sh -c WRAPPER sh python -m module args...`: run the trainer, keep its exit status in a file.
_WRAPPER = '"$@"; code=$?; echo "$code" > "$ML_ENGINE_EXIT_FILE"; exit "$code"'


class JobStopped(Exception):
    """The job was cancelled (or the service is stopping) while it prepared."""


def _field_error(field: str, message: str) -> ApiError:
    return invalid_argument(f"Field: training_input.{field} Error: {message}", f"training_input.{field}")


def container_engine() -> str | None:
    """``docker`` or ``podman`` when its client is installed AND an engine answers; None otherwise."""
    for client in ("docker", "podman"):
        if shutil.which(client) is None:
            continue
        try:
            if subprocess.run([client, "info"], capture_output=True, timeout=10).returncode == 0:
                return client
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def validate_training_input(given: object) -> dict:
    """Check trainingInput as ml/v1 did; the stored copy is what the request said, with defaults filled in."""
    if not isinstance(given, dict):
        raise invalid_argument("Field: job.training_input Error: trainingInput must be an object.",
                               "job.training_input")
    training_input = dict(given)
    if training_input.get("hyperparameters"):
        raise unimplemented("Hyperparameter tuning (trainingInput.hyperparameters)")
    image = (training_input.get("masterConfig") or {}).get("imageUri") \
        if isinstance(training_input.get("masterConfig"), dict) else None
    if image:
        engine = container_engine()
        raise (invalid_argument(
            "Field: training_input.master_config.image_uri Error: custom containers need a container engine, "
            "and none answers on this machine (docker/podman missing or its daemon not running); package the "
            "trainer as a Python package (packageUris + pythonModule) instead.",
            "training_input.master_config.image_uri") if engine is None else
            unimplemented(f"Custom containers (masterConfig.imageUri; {engine} is available but not used)"))
    module = training_input.get("pythonModule")
    if not isinstance(module, str) or not MODULE_RULE.match(module):
        raise _field_error("python_module", "pythonModule is required: a dotted Python module name, "
                           f"e.g. trainer.task (got {module!r}).")
    packages = training_input.get("packageUris")
    if not isinstance(packages, list) or not packages:
        raise _field_error("package_uris", "packageUris must list at least one gs:// package.")
    if len(packages) > MAX_PACKAGES:
        raise _field_error("package_uris", f"at most {MAX_PACKAGES} packageUris are allowed, got {len(packages)}.")
    for uri in packages:
        if not isinstance(uri, str) or not uri.startswith("gs://") or "/" not in uri[5:]:
            raise _field_error("package_uris", f"'{uri}' is not a gs:// URI of a package file.")
        if not PACKAGE_FILE_RULE.match(uri.rsplit("/", 1)[1]):
            raise _field_error("package_uris", f"'{uri}' must name a Python package file (.tar.gz, .whl or .zip).")
    args = training_input.get("args", [])
    if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
        raise _field_error("args", "args must be a list of strings.")
    if not isinstance(training_input.get("region"), str) or not training_input["region"]:
        raise _field_error("region", "region is required.")
    job_dir = training_input.get("jobDir")
    if job_dir is not None and (not isinstance(job_dir, str) or not job_dir.startswith("gs://") or len(job_dir) <= 5):
        raise _field_error("job_dir", f"jobDir must be a gs:// path, got {job_dir!r}.")
    tier = training_input.setdefault("scaleTier", "BASIC")
    if tier not in SCALE_TIERS:
        raise _field_error("scale_tier", f"scaleTier must be one of {list(SCALE_TIERS)}, got {tier!r}.")
    if tier == "CUSTOM" and not training_input.get("masterType"):
        raise _field_error("master_type", "masterType is required when scaleTier is CUSTOM.")
    for field in ("runtimeVersion", "pythonVersion", "masterType"):
        if training_input.get(field) is not None and not isinstance(training_input[field], str):
            raise _field_error(field, f"{field} must be a string.")
    return training_input


def work_dir(ctx: Context, name: str) -> Path:
    """The job's own directory (its id is a checked ml/v1 name: letters, digits, underscores)."""
    project, job_id = name.split("/")[1], name.rsplit("/", 1)[1]
    return ctx.state_dir / "training" / project / job_id


def log_path(ctx: Context, name: str) -> Path:
    return work_dir(ctx, name) / LOG_NAME


def _append_log(ctx: Context, name: str, text: str) -> None:
    """A line from the service itself (as the hosted service logged its own steps beside the trainer's)."""
    with log_path(ctx, name).open("a", encoding="utf-8") as out:
        out.write(f"[local_platform] {text}\n")


def submit(ctx: Context, name: str) -> None:
    """Run the job in a thread of its own (training can take hours; batch workers stay free)."""
    threading.Thread(target=_run_logged, args=(ctx, name), daemon=True, name=f"train-{name.rsplit('/', 1)[1]}").start()


def _run_logged(ctx: Context, name: str, attach: dict | None = None) -> None:
    try:
        if attach is not None:
            _watch(ctx, name, attach["pid"], None, started=attach["started"])
        else:
            run_job(ctx, name)
    except Exception as error:
        log.exception("training job %s crashed", name)
        _finish(ctx, name, "FAILED", errorMessage=f"Internal error: {error}")


def _state(ctx: Context, name: str) -> str | None:
    return (ctx.store.get(name) or {}).get("state")


def _check_stop(ctx: Context, name: str) -> None:
    if ctx.cancel_event(name).is_set() or _state(ctx, name) == "CANCELLING" or ctx.stopping.is_set():
        raise JobStopped()


def _finish(ctx: Context, name: str, state: str, **fields) -> None:
    job = ctx.store.get(name) or {}
    started = job.get("_runSince") or time.time()
    hours = max(time.time() - started, 0.0) / 3600
    # One local process = one BASIC master: 1 ML unit per hour, whatever scaleTier asked for.
    output = {**(job.get("trainingOutput") or {}), "consumedMLUnits": round(hours, 6)}
    revise(ctx, name, state=state, endTime=now_rfc3339(), trainingOutput=output, **fields)
    ctx.cancel_events.pop(name, None)
    log.info("training job %s %s%s", name, state, f": {fields['errorMessage']}" if fields.get("errorMessage") else "")


def run_job(ctx: Context, name: str) -> None:
    """QUEUED -> (a free slot) -> PREPARING (download, pip install) -> RUNNING -> the trainer's outcome."""
    while not SLOTS.acquire(timeout=1.0):  # waiting QUEUED; a cancel or a shutdown ends the wait
        if ctx.stopping.is_set():
            return
        if _state(ctx, name) == "CANCELLING":
            _finish(ctx, name, "CANCELLED")
            return
    try:
        _run_with_slot(ctx, name)
    finally:
        SLOTS.release()


def _run_with_slot(ctx: Context, name: str) -> None:
    with ctx.store.transaction():
        state = _state(ctx, name)
        if state == "CANCELLING":
            revise(ctx, name, state="CANCELLED", endTime=now_rfc3339())
        if state != "QUEUED":
            return
        revise(ctx, name, state="PREPARING", startTime=now_rfc3339(), _runSince=time.time())
    job = ctx.store.get(name)
    directory = work_dir(ctx, name)
    shutil.rmtree(directory / "packages", ignore_errors=True)
    shutil.rmtree(directory / "site", ignore_errors=True)
    (directory / "packages").mkdir(parents=True, exist_ok=True)
    (directory / EXIT_NAME).unlink(missing_ok=True)
    try:
        files = _download_packages(ctx, name, job["trainingInput"]["packageUris"], directory / "packages")
        _pip_install(ctx, name, files, directory / "site")
        _check_stop(ctx, name)
    except JobStopped:
        if ctx.stopping.is_set():
            return  # still PREPARING: prepared again at the next start
        _finish(ctx, name, "CANCELLED")
        return
    except (gcs.GcsError, PreparationFailed) as error:
        _append_log(ctx, name, f"preparation failed: {error}")
        _finish(ctx, name, "FAILED", errorMessage=str(error))
        return
    process = _start_trainer(ctx, name, job, directory)
    started = _process_start_time(process.pid)
    with ctx.store.transaction():  # a cancel that came meanwhile stays CANCELLING (the watch acts on it)
        running = {"state": "RUNNING"} if _state(ctx, name) == "PREPARING" else {}
        revise(ctx, name, _pid=process.pid, _pidStarted=started, **running)
    log.info("training job %s RUNNING: python -m %s (pid %s)", name, job["trainingInput"]["pythonModule"],
             process.pid)
    _watch(ctx, name, process.pid, process, started=started)


class PreparationFailed(Exception):
    """The packages could not be installed."""


def _download_packages(ctx: Context, name: str, uris: list[str], target: Path) -> list[Path]:
    """Each package to packages/<index>/<file name>: the name was checked, and the index keeps duplicates apart."""
    files = []
    for index, uri in enumerate(uris):
        _check_stop(ctx, name)
        file_name = uri.rsplit("/", 1)[1]
        if not PACKAGE_FILE_RULE.match(file_name):  # validated at create; checked again before it becomes a path
            raise PreparationFailed(f"{uri} does not name a package file")
        path = target / str(index) / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        _append_log(ctx, name, f"downloading {uri}")
        gcs.download_file(uri, path)
        files.append(path)
    return files


def _pip_install(ctx: Context, name: str, files: list[Path], site: Path) -> None:
    """``pip install --target site`` without dependencies, then only the requirements the service lacks.

    --target alone would reinstall every dependency (TensorFlow included) into the
    job; the service's own packages satisfy most, and the rest are installed beside
    the job's packages.
    """
    base = [sys.executable, "-m", "pip", "install", "--target", str(site), "--disable-pip-version-check",
            "--no-input", "--no-warn-script-location", "--no-build-isolation"]
    _run_pip(ctx, name, [*base, "--no-deps", *map(str, files)])
    missing = _missing_requirements(site)
    if missing:
        _append_log(ctx, name, f"installing requirements missing from the runtime: {missing}")
        _run_pip(ctx, name, [*base, *missing])


def _run_pip(ctx: Context, name: str, argv: list[str]) -> None:
    _append_log(ctx, name, "running " + " ".join(argv[2:]))
    with log_path(ctx, name).open("ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        while process.poll() is None:
            try:
                _check_stop(ctx, name)
            except JobStopped:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise
            time.sleep(POLL_S)
    if process.returncode != 0:
        raise PreparationFailed(f"pip install of the training packages failed with exit status "
                                f"{process.returncode}: {_last_error_line(log_path(ctx, name))}")


def _missing_requirements(site: Path) -> list[str]:
    """Requirements of the job's packages that neither the job's site dir nor the service's environment meet."""
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    installed = {canonicalize_name(dist.metadata["Name"]): dist.version
                 for dist in metadata.distributions(path=[str(site), *sys.path]) if dist.metadata["Name"]}
    missing = []
    for dist in metadata.distributions(path=[str(site)]):
        for text in dist.requires or []:
            try:
                requirement = Requirement(text)
            except InvalidRequirement:
                continue
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            version = installed.get(canonicalize_name(requirement.name))
            if version is None or not requirement.specifier.contains(version, prereleases=True):
                missing.append(str(requirement))
    return sorted(set(missing))


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def trainer_environment(job: dict, site: Path, exit_file: Path) -> dict[str, str]:
    """The environment the hosted service gave trainers: CLOUD_ML_JOB and TF_CONFIG (a single master)."""
    training_input = {_snake(key): value for key, value in job["trainingInput"].items()}
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update({
        "PYTHONPATH": str(site),
        "PYTHONUNBUFFERED": "1",
        "CLOUD_ML_JOB": json.dumps(training_input),
        "CLOUD_ML_JOB_ID": job["jobId"],
        "TF_CONFIG": json.dumps({
            "cluster": {"master": ["127.0.0.1:2222"]},
            "task": {"type": "master", "index": 0, "trial": ""},
            "job": training_input,
            "environment": "cloud",
        }),
        "ML_ENGINE_EXIT_FILE": str(exit_file),
    })
    return env


def trainer_argv(training_input: dict) -> list[str]:
    """``python -m module args...``, plus ``--job-dir <jobDir>`` when the args do not already carry it."""
    args = list(training_input.get("args") or [])
    job_dir = training_input.get("jobDir")
    if job_dir and not any(arg == "--job-dir" or arg.startswith("--job-dir=") for arg in args):
        args += ["--job-dir", job_dir]
    return [sys.executable, "-m", training_input["pythonModule"], *args]


def _start_trainer(ctx: Context, name: str, job: dict, directory: Path) -> subprocess.Popen:
    argv = trainer_argv(job["trainingInput"])
    env = trainer_environment(job, directory / "site", directory / EXIT_NAME)
    _append_log(ctx, name, "running python -m " + " ".join(argv[2:]))
    run_dir = directory / "run"
    run_dir.mkdir(exist_ok=True)
    with log_path(ctx, name).open("ab") as out:
        return subprocess.Popen(["/bin/sh", "-c", _WRAPPER, "sh", *argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=run_dir, start_new_session=True)


def _process_start_time(pid: int) -> float | None:
    """Start time of a process in clock ticks since boot (Linux /proc); None when it is gone."""
    try:
        return float(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, started: float | None) -> bool:
    """Is ``pid`` still the trainer we started (not a reused pid, not a zombie)?"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and _process_start_time(pid) == started


def _stop_group(pid: int, process: subprocess.Popen | None, started: float | None) -> None:
    """SIGTERM the trainer's whole process group, SIGKILL what is left after a grace period."""
    for sig, wait in ((signal.SIGTERM, TERMINATE_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if process is not None:
                if process.poll() is not None and not _group_alive(pid):
                    return
            elif not _alive(pid, started) and not _group_alive(pid):
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _watch(ctx: Context, name: str, pid: int, process: subprocess.Popen | None, *, started: float | None) -> None:
    """Wait for the trainer (ours, or re-attached after a restart), honouring cancels; record its outcome."""
    directory = work_dir(ctx, name)
    while True:
        if process is not None:
            code = process.poll()
            if code is not None:
                break
        elif not _alive(pid, started):
            code = None
            break
        if ctx.stopping.is_set():
            log.info("training job %s: service stopping; trainer pid %s keeps running and is re-attached at the "
                     "next start", name, pid)
            return
        if ctx.cancel_event(name).is_set() or _state(ctx, name) == "CANCELLING":
            _append_log(ctx, name, "cancel requested: stopping the trainer's process group")
            _stop_group(pid, process, started)
            _finish(ctx, name, "CANCELLED")
            return
        time.sleep(POLL_S)
    if _group_alive(pid):  # the trainer ended but left children behind: they go with it
        _stop_group(pid, None, None)
    code = _exit_status(directory / EXIT_NAME, code)
    if _state(ctx, name) == "CANCELLING":
        _finish(ctx, name, "CANCELLED")
    elif code == 0:
        _append_log(ctx, name, "the trainer finished successfully")
        _finish(ctx, name, "SUCCEEDED")
    else:
        message = _failure_message(code, log_path(ctx, name))
        _append_log(ctx, name, message)
        _finish(ctx, name, "FAILED", errorMessage=message)


def _exit_status(exit_file: Path, code: int | None) -> int | None:
    """The trainer's exit status: from the wrapper's file (also after a restart), else from wait()."""
    try:
        return int(exit_file.read_text().strip())
    except (OSError, ValueError):
        return code


def _failure_message(code: int | None, log_file: Path) -> str:
    if code is None:
        return ("The trainer process ended while the service was not watching it (the service restarted); "
                "its exit status is unknown. Last output: " + _last_error_line(log_file))
    if code < 0:
        return f"The replica master 0 was killed by signal {-code}. {_last_error_line(log_file)}"
    return f"The replica master 0 exited with a non-zero status of {code}. {_last_error_line(log_file)}"


def tail_lines(path: Path, count: int = 1000, size: int = 256 * 1024) -> list[str]:
    """The last ``count`` lines of a log (from its last ``size`` bytes)."""
    try:
        with path.open("rb") as stream:
            stream.seek(max(stream.seek(0, os.SEEK_END) - size, 0))
            return stream.read().decode("utf-8", "replace").splitlines()[-count:]
    except OSError:
        return []


def _last_error_line(log_file: Path) -> str:
    """The exception line of the last traceback in the log, else its last line of its own."""
    lines = [line for line in tail_lines(log_file) if line.strip() and not line.startswith("[local_platform]")]
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if tracebacks:
        after = [line for line in lines[tracebacks[-1] + 1:] if not line.startswith((" ", "\t"))]
        if after:
            return after[-1].strip()[:1000]
    return lines[-1].strip()[:1000] if lines else "(no output)"


def resume(ctx: Context) -> None:
    """After a restart no training job stays RUNNING unwatched: re-attach, finish, or start again."""
    for job in ctx.store.list("job"):
        if "trainingInput" not in job or job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            continue
        name, pid, started = job["_name"], job.get("_pid"), job.get("_pidStarted")
        state = job["state"]
        running = bool(pid) and state in ("RUNNING", "CANCELLING") and _alive(pid, started)
        if state == "CANCELLING":
            if running:
                _stop_group(pid, None, started)
            _finish(ctx, name, "CANCELLED")
        elif state in ("QUEUED", "PREPARING"):
            log.info("training job %s was %s when the service stopped; preparing it again", name, state)
            revise(ctx, name, state="QUEUED")
            submit(ctx, name)
        elif running:
            log.info("training job %s: re-attaching to trainer pid %s", name, pid)
            _append_log(ctx, name, f"service restarted: re-attached to the trainer (pid {pid})")
            threading.Thread(target=_run_logged, args=(ctx, name, {"pid": pid, "started": started}), daemon=True,
                             name=f"train-{job['jobId']}").start()
        else:
            code = _exit_status(work_dir(ctx, name) / EXIT_NAME, None)
            if code == 0:
                _finish(ctx, name, "SUCCEEDED")
            else:
                _finish(ctx, name, "FAILED", errorMessage=_failure_message(code, log_path(ctx, name)))


def read_log(ctx: Context, project: str, job_id: str, offset: int, limit: int = LOG_READ_LIMIT) -> dict:
    """Lines of a training job's log from byte ``offset``: whole lines only, unless the job has ended."""
    name = job_name(project, job_id)
    job = ctx.store.get(name)
    if job is None:
        raise not_found(f"Job {name}")
    if "trainingInput" not in job:
        raise invalid_argument(f"Job {name} is not a training job; only training jobs have logs.")
    if offset < 0 or limit <= 0:
        raise invalid_argument("offset must be >= 0 and limit > 0.")
    limit = min(limit, LOG_READ_LIMIT)
    ended = job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED")
    path = log_path(ctx, name)
    size = path.stat().st_size if path.exists() else 0
    chunk = b""
    if offset < size:
        with path.open("rb") as stream:
            stream.seek(offset)
            chunk = stream.read(limit)
    if not (ended and offset + len(chunk) >= size):  # a line still being written waits for its newline
        chunk = chunk[: chunk.rindex(b"\n") + 1] if b"\n" in chunk else b""
    next_offset = offset + len(chunk)
    return {"lines": chunk.decode("utf-8", "replace").splitlines(), "nextOffset": str(next_offset),
            "state": job["state"], "done": ended and next_offset >= size}
