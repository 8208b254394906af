"""The trainer as an operating-system process: its packages, environment, start, watch and stop.

What hosted ml/v1 did on a job's master replica, on this machine: ``pip install``
the job's packages into the job's own directory (the service's environment never
changes, and TensorFlow from it is reused), then ``python -m <pythonModule> <args>
--job-dir <jobDir>`` with ``CLOUD_ML_JOB`` and ``TF_CONFIG`` set. The trainer runs
in its own session (process group) with stdout and stderr appended to the job's
log file, so the log survives the service; a tiny shell wrapper writes the exit
status to a file, so it is known even when the service was down at the end; and a
restart recognises a trainer that is still running by its pid and start time.
Nothing here knows about the job's state: ``training`` does.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

LOG_NAME = "trainer.log"
EXIT_NAME = "exit_status"
POLL_S = 0.5
TERMINATE_GRACE_S = 10.0
#: Lines the service writes into a job's log start with this (the trainer's own lines do not).
SERVICE_PREFIX = "[local_platform]"
# `sh -c WRAPPER sh python -m module args...`: run the trainer, keep its exit status in a file.
_WRAPPER = '"$@"; code=$?; echo "$code" > "$ML_ENGINE_EXIT_FILE"; exit "$code"'


class PreparationFailed(Exception):
    """The packages could not be installed."""


class Stopped(Exception):
    """A cancel or a shutdown arrived while a package install ran (the install was killed)."""


def append_log(log_file: Path, text: str) -> None:
    """A line from the service itself (as the hosted service logged its own steps beside the trainer's)."""
    with log_file.open("a", encoding="utf-8") as out:
        out.write(f"{SERVICE_PREFIX} {text}\n")


def install_packages(files: list[Path], site: Path, log_file: Path, should_stop: Callable[[], bool]) -> None:
    """``pip install --target site`` without dependencies, then only the requirements the service lacks.

    --target alone would reinstall every dependency (TensorFlow included) into the
    job; the service's own packages satisfy most, and the rest are installed beside
    the job's packages.
    """
    base = [sys.executable, "-m", "pip", "install", "--target", str(site), "--disable-pip-version-check",
            "--no-input", "--no-warn-script-location", "--no-build-isolation"]
    _run_pip([*base, "--no-deps", *map(str, files)], log_file, should_stop)
    missing = _missing_requirements(site)
    if missing:
        append_log(log_file, f"installing requirements missing from the runtime: {missing}")
        _run_pip([*base, *missing], log_file, should_stop)


def _run_pip(argv: list[str], log_file: Path, should_stop: Callable[[], bool]) -> None:
    append_log(log_file, "running " + " ".join(argv[2:]))
    with log_file.open("ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        while process.poll() is None:
            if should_stop():
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise Stopped()
            time.sleep(POLL_S)
    if process.returncode != 0:
        raise PreparationFailed(f"pip install of the training packages failed with exit status "
                                f"{process.returncode}: {last_error_line(log_file)}")


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


def environment(job: dict, site: Path, exit_file: Path) -> dict[str, str]:
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


def argv(training_input: dict) -> list[str]:
    """``python -m module args...``, plus ``--job-dir <jobDir>`` when the args do not already carry it."""
    args = list(training_input.get("args") or [])
    job_dir = training_input.get("jobDir")
    if job_dir and not any(arg == "--job-dir" or arg.startswith("--job-dir=") for arg in args):
        args += ["--job-dir", job_dir]
    return [sys.executable, "-m", training_input["pythonModule"], *args]


def start(job: dict, directory: Path, log_file: Path) -> subprocess.Popen:
    """Start the trainer in its own session, its output appended to ``log_file``."""
    command = argv(job["trainingInput"])
    env = environment(job, directory / "site", directory / EXIT_NAME)
    append_log(log_file, "running python -m " + " ".join(command[2:]))
    run_dir = directory / "run"
    run_dir.mkdir(exist_ok=True)
    with log_file.open("ab") as out:
        return subprocess.Popen(["/bin/sh", "-c", _WRAPPER, "sh", *command], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=run_dir, start_new_session=True)


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


def stop_group(pid: int, process: subprocess.Popen | None, started: float | None) -> None:
    """SIGTERM the trainer's whole process group, SIGKILL what is left after a grace period."""
    for sig, wait in ((signal.SIGTERM, TERMINATE_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if process is not None:
                if process.poll() is not None and not group_alive(pid):
                    return
            elif not alive(pid, started) and not group_alive(pid):
                return
            time.sleep(0.1)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def exit_status(exit_file: Path, code: int | None) -> int | None:
    """The trainer's exit status: from the wrapper's file (also after a restart), else from wait()."""
    try:
        return int(exit_file.read_text().strip())
    except (OSError, ValueError):
        return code


def failure_message(code: int | None, log_file: Path) -> str:
    if code is None:
        return ("The trainer process ended while the service was not watching it (the service restarted); "
                "its exit status is unknown. Last output: " + last_error_line(log_file))
    if code < 0:
        return f"The replica master 0 was killed by signal {-code}. {last_error_line(log_file)}"
    return f"The replica master 0 exited with a non-zero status of {code}. {last_error_line(log_file)}"


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
