"""The trainer as an operating-system process: its packages, environment, start, watch and stop.

What hosted ml/v1 did on a job's master replica, on this machine: ``pip install``
the job's packages into the job's own directory (the service's environment never
changes, and TensorFlow from it is reused), then ``python -m <pythonModule> <args>
--job-dir <jobDir>`` with ``CLOUD_ML_JOB`` and ``TF_CONFIG`` set. Both run
sandboxed (``trainer_sandbox``: a user of their own when the service is root, an
allow-listed environment, limits, a capped log). The trainer runs in its own
session with its output appended to the job's log file, so the log survives the
service; the exit status goes to a file, so it is known even when the service was
down at the end; and a restart recognises a trainer still running by its pid and
start time. Nothing here knows about the job's state: ``training`` does.

A job's directory (``training/<project>/<job>/``) belongs to the service and holds
``trainer.log`` and the downloaded ``packages/``; only ``home/`` inside it (HOME,
working directory, installed packages, exit status) belongs to the trainer, so
nothing the trainer plants there is ever opened by the service except through
``read_small`` (no symlinks followed).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from include.local_platform.workers import trainer_sandbox
from include.local_platform.workers.trainer_sandbox import Identity

LOG_NAME = "trainer.log"
HOME_NAME = "home"
EXIT_NAME = "exit_status"
PIP_EXIT_NAME = "pip_exit_status"
POLL_S = 0.5
TERMINATE_GRACE_S = 10.0
#: Lines the service writes into a job's log start with this (the trainer's own lines do not).
SERVICE_PREFIX = "[local_platform]"
BUILD_ISOLATION_ENV = "ML_ENGINE_TRAINER_BUILD_ISOLATION"


class PreparationFailed(Exception):
    """The packages could not be installed."""


class Stopped(Exception):
    """A cancel or a shutdown arrived while a package install ran (the install was killed)."""


def append_log(log_file: Path, text: str) -> None:
    """A line from the service itself (as the hosted service logged its own steps beside the trainer's)."""
    with log_file.open("a", encoding="utf-8") as out:
        out.write(f"{SERVICE_PREFIX} {text}\n")


def home(directory: Path) -> Path:
    return directory / HOME_NAME


def install_packages(files: list[Path], directory: Path, log_file: Path, should_stop: Callable[[], bool],
                     who: Identity) -> None:
    """``pip install --target home/site`` without dependencies, then only the requirements the service lacks.

    --target alone would reinstall every dependency (TensorFlow included) into the
    job; the service's own packages satisfy most, and the rest are installed beside
    the job's packages. pip runs sandboxed like the trainer: a wheel installs as is, an
    sdist is built in an isolated build environment (``ML_ENGINE_TRAINER_BUILD_ISOLATION=0``
    builds with the service's setuptools instead, for hosts without a package index).
    """
    site = home(directory) / "site"
    base = [who.python, "-m", "pip", "install", "--target", str(site), "--disable-pip-version-check",
            "--no-input", "--no-warn-script-location"]
    if os.environ.get(BUILD_ISOLATION_ENV, "1") == "0":
        base.append("--no-build-isolation")
    _run_pip([*base, "--no-deps", *map(str, files)], directory, log_file, should_stop, who)
    missing = _missing_requirements(site)
    if missing:
        append_log(log_file, f"installing requirements missing from the runtime: {missing}")
        _run_pip([*base, *missing], directory, log_file, should_stop, who)


def _run_pip(argv: list[str], directory: Path, log_file: Path, should_stop: Callable[[], bool],
             who: Identity) -> None:
    append_log(log_file, "running " + " ".join(argv[2:]))
    exit_file = home(directory) / PIP_EXIT_NAME
    env = trainer_sandbox.environment({"PYTHONPATH": ""}, home(directory), f"pip-{directory.name}", who.python)
    process = trainer_sandbox.spawn(argv, env=env, cwd=home(directory), log_file=log_file, exit_file=exit_file,
                                    who=who)
    while process.poll() is None:
        if should_stop():
            trainer_sandbox.stop_tree(process.pid, f"pip-{directory.name}", grace_s=0)
            process.wait()
            raise Stopped()
        time.sleep(POLL_S)
    code = exit_status(exit_file, process.returncode)
    if code != 0:
        raise PreparationFailed(f"pip install of the training packages failed with exit status "
                                f"{code}: {last_error_line(log_file)}")


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


def task_type(training_input: dict) -> str:
    """``chief`` for runtime versions 2.1 and later, else ``master``, as Google documents for TF_CONFIG
    (``useChiefInTfConfig`` only concerns custom containers, which this service does not run)."""
    match = re.match(r"^(\d+)\.(\d+)", str(training_input.get("runtimeVersion") or ""))
    return "chief" if match and (int(match[1]), int(match[2])) >= (2, 1) else "master"


def job_variables(job: dict, site: Path) -> dict[str, str]:
    """The variables hosted ml/v1 gave trainers: CLOUD_ML_JOB, CLOUD_ML_JOB_ID and TF_CONFIG (one primary task);
    Vertex AI's (``vertex_variables``) for a Vertex AI custom job."""
    if "_vertex" in job:
        return {**vertex_variables(job), "PYTHONPATH": str(site), "PYTHONUNBUFFERED": "1"}
    training_input = {_snake(key): value for key, value in job["trainingInput"].items()}
    primary = task_type(job["trainingInput"])
    return {
        "PYTHONPATH": str(site),
        "PYTHONUNBUFFERED": "1",
        "CLOUD_ML_JOB": json.dumps(training_input),
        "CLOUD_ML_JOB_ID": job["jobId"],
        "TF_CONFIG": json.dumps({
            "cluster": {primary: ["127.0.0.1:2222"]},
            "task": {"type": primary, "index": 0, "trial": ""},
            "job": training_input,
            "environment": "cloud",
        }),
    }


def vertex_variables(job: dict) -> dict[str, str]:
    """What Vertex AI sets for a custom job's first worker pool: the AIP_* directories under the base output
    directory, CLUSTER_SPEC, TF_CONFIG (the chief), CLOUD_ML_PROJECT_ID; the pool's own env first."""
    vertex = job["_vertex"]
    base = vertex["baseOutputDirectory"].rstrip("/")
    host = ["127.0.0.1:2222"]
    return {
        **vertex.get("env", {}),
        "AIP_MODEL_DIR": f"{base}/model/",
        "AIP_CHECKPOINT_DIR": f"{base}/checkpoints/",
        "AIP_TENSORBOARD_LOG_DIR": f"{base}/logs/",
        "CLOUD_ML_PROJECT_ID": job["_name"].split("/")[1],
        "CLUSTER_SPEC": json.dumps({"cluster": {"workerpool0": host}, "environment": "cloud",
                                    "task": {"type": "workerpool0", "index": 0}}),
        "TF_CONFIG": json.dumps({"cluster": {"chief": host}, "environment": "cloud",
                                 "task": {"type": "chief", "index": 0}, "job": vertex["jobSpec"]}),
    }


def argv(training_input: dict, python: str = sys.executable) -> list[str]:
    """``python -m module args...``, plus ``--job-dir <jobDir>`` when the args do not already carry it."""
    args = list(training_input.get("args") or [])
    job_dir = training_input.get("jobDir")
    if job_dir and not any(arg == "--job-dir" or arg.startswith("--job-dir=") for arg in args):
        args += ["--job-dir", job_dir]
    return [python, "-m", training_input["pythonModule"], *args]


def start(job: dict, directory: Path, log_file: Path, marker: str, who: Identity) -> subprocess.Popen:
    """Start the trainer sandboxed in its own session, its output appended to ``log_file``."""
    command = argv(job["trainingInput"], who.python)
    job_home = home(directory)
    env = trainer_sandbox.environment(job_variables(job, job_home / "site"), job_home, marker, who.python)
    append_log(log_file, "running python -m " + " ".join(command[2:]))
    (job_home / "tmp").mkdir(exist_ok=True)
    trainer_sandbox.give(job_home / "tmp", who)
    return trainer_sandbox.spawn(command, env=env, cwd=job_home, log_file=log_file,
                                 exit_file=job_home / EXIT_NAME, who=who)


def start_time(pid: int) -> float | None:
    """Start time of a process in clock ticks since boot (Linux /proc); None when it is gone."""
    try:
        return float(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int, started: float | None) -> bool:
    """Is ``pid`` still the trainer we started (not a reused pid, not a zombie)?"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and start_time(pid) == started


def stop(pid: int, marker: str | None) -> None:
    """Stop the trainer and everything it started: SIGTERM, then SIGKILL after a grace period."""
    trainer_sandbox.stop_tree(pid, marker, grace_s=TERMINATE_GRACE_S)


def leftovers(pid: int, marker: str | None) -> bool:
    """Whether processes of an ended trainer are still running (children it left behind)."""
    return bool(trainer_sandbox.processes_of(pid, marker))


def read_small(path: Path, limit: int = 64) -> str | None:
    """The start of a small file in the trainer's home, never through a symlink; None if unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as stream:
        return stream.read(limit).decode("ascii", "replace")


def exit_status(exit_file: Path, code: int | None) -> int | None:
    """The exit status the wrapper wrote (also after a restart), else ``code``."""
    try:
        return int((read_small(exit_file) or "").strip())
    except ValueError:
        return code


def failure_message(code: int | None, log_file: Path, task: str = "master") -> str:
    """Hosted ml/v1's wording for a failed replica (``task``: TF_CONFIG's name of the primary task)."""
    if code is None:
        return ("The trainer process ended while the service was not watching it (the service restarted); "
                "its exit status is unknown. Last output: " + last_error_line(log_file))
    if code < 0:
        return f"The replica {task} 0 was killed by signal {-code}. {last_error_line(log_file)}"
    return f"The replica {task} 0 exited with a non-zero status of {code}. {last_error_line(log_file)}"


def tail_lines(path: Path, count: int = 1000, size: int = 256 * 1024) -> list[str]:
    """The last ``count`` lines of a log (from its last ``size`` bytes)."""
    try:
        with path.open("rb") as stream:
            stream.seek(max(stream.seek(0, os.SEEK_END) - size, 0))
            return stream.read().decode("utf-8", "replace").splitlines()[-count:]
    except OSError:
        return []


def last_error_line(log_file: Path) -> str:
    """The exception line of the last traceback in the log, else its last line of its own."""
    lines = [line for line in tail_lines(log_file) if line.strip() and not line.startswith(SERVICE_PREFIX)]
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if tracebacks:
        after = [line for line in lines[tracebacks[-1] + 1:] if not line.startswith((" ", "\t"))]
        if after:
            return after[-1].strip()[:1000]
    return lines[-1].strip()[:1000] if lines else "(no output)"
