"""Training jobs: QUEUED -> (a free slot) -> PREPARING (download, install) -> RUNNING -> the trainer's outcome.

The trainer itself is an operating-system process (``trainer_process``); this
module moves the job through its states (each move a compare-and-set, so a
cancel is never written over), watches the trainer, honours cancels, and after a
restart re-attaches to a trainer still running or records how it ended.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

from include.local_platform import gcs
from include.local_platform.context import Context
from include.local_platform.errors import invalid_argument, not_found
from include.local_platform.resources.names import job_name
from include.local_platform.resources.training_input import PACKAGE_FILE_RULE
from include.local_platform.state.clock import now_rfc3339
from include.local_platform.workers import trainer_process
from include.local_platform.workers.trainer_process import EXIT_NAME, LOG_NAME, POLL_S, PreparationFailed, Stopped

log = logging.getLogger(__name__)

LOG_READ_LIMIT = 1024 * 1024
ACTIVE = ("QUEUED", "PREPARING", "RUNNING")
ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")
#: Trainers running at once; more wait QUEUED (ml/v1 queued jobs beyond a project's quota the same way).
SLOTS = threading.BoundedSemaphore(int(os.environ.get("ML_ENGINE_TRAINING_SLOTS", "2")))


def work_dir(ctx: Context, name: str) -> Path:
    """The job's own directory (its id is a checked ml/v1 name: letters, digits, underscores)."""
    project, job_id = name.split("/")[1], name.rsplit("/", 1)[1]
    return ctx.state_dir / "training" / project / job_id


def log_path(ctx: Context, name: str) -> Path:
    return work_dir(ctx, name) / LOG_NAME


def _append_log(ctx: Context, name: str, text: str) -> None:
    trainer_process.append_log(log_path(ctx, name), text)


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


def _stop_asked(ctx: Context, name: str) -> bool:
    return ctx.cancel_event(name).is_set() or _state(ctx, name) == "CANCELLING" or ctx.stopping.is_set()


def _finish(ctx: Context, name: str, state: str, **fields) -> None:
    """End an active job in ``state``; a cancel asked meanwhile wins (CANCELLING ends CANCELLED)."""
    job = ctx.store.get(name) or {}
    hours = max(time.time() - (job.get("_runSince") or time.time()), 0.0) / 3600
    # One local process = one BASIC master: 1 ML unit per hour, whatever scaleTier asked for.
    ended = {"endTime": now_rfc3339(),
             "trainingOutput": {**(job.get("trainingOutput") or {}), "consumedMLUnits": round(hours, 6)}}
    with ctx.store.transaction():
        if ctx.store.transition(name, ACTIVE, state=state, **ended, **fields) is None:
            fields.pop("errorMessage", None)
            state = "CANCELLED" if ctx.store.transition(name, ("CANCELLING",), state="CANCELLED", **ended,
                                                        **fields) else _state(ctx, name)
    ctx.cancel_events.pop(name, None)
    log.info("training job %s %s%s", name, state, f": {fields['errorMessage']}" if fields.get("errorMessage") else "")


def run_job(ctx: Context, name: str) -> None:
    """Wait QUEUED for a slot (a cancel or a shutdown ends the wait), then prepare and run the trainer."""
    while not SLOTS.acquire(timeout=1.0):
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
        if ctx.store.transition(name, ("CANCELLING",), state="CANCELLED", endTime=now_rfc3339()) is not None:
            return
        job = ctx.store.transition(name, ("QUEUED",), state="PREPARING", startTime=now_rfc3339(),
                                   _runSince=time.time())
    if job is None:
        return
    directory = work_dir(ctx, name)
    try:
        _prepare(ctx, name, job, directory)
    except Stopped:
        if not ctx.stopping.is_set():  # a stop leaves it PREPARING: prepared again at the next start
            _finish(ctx, name, "CANCELLED")
        return
    except (gcs.GcsError, PreparationFailed) as error:
        _append_log(ctx, name, f"preparation failed: {error}")
        _finish(ctx, name, "FAILED", errorMessage=str(error))
        return
    process = trainer_process.start(job, directory, log_path(ctx, name))
    started = trainer_process.start_time(process.pid)
    with ctx.store.transaction():  # a cancel that came meanwhile stays CANCELLING (the watch acts on it)
        ctx.store.revise(name, _pid=process.pid, _pidStarted=started)
        ctx.store.transition(name, ("PREPARING",), state="RUNNING")
    log.info("training job %s RUNNING: python -m %s (pid %s)", name, job["trainingInput"]["pythonModule"],
             process.pid)
    _watch(ctx, name, process.pid, process, started=started)


def _prepare(ctx: Context, name: str, job: dict, directory: Path) -> None:
    """A clean job directory, the packages downloaded and installed; Stopped on a cancel or a shutdown."""
    shutil.rmtree(directory / "packages", ignore_errors=True)
    shutil.rmtree(directory / "site", ignore_errors=True)
    (directory / "packages").mkdir(parents=True, exist_ok=True)
    (directory / EXIT_NAME).unlink(missing_ok=True)
    files = _download_packages(ctx, name, job["trainingInput"]["packageUris"], directory / "packages")
    trainer_process.install_packages(files, directory / "site", log_path(ctx, name), lambda: _stop_asked(ctx, name))
    if _stop_asked(ctx, name):
        raise Stopped()


def _download_packages(ctx: Context, name: str, uris: list[str], target: Path) -> list[Path]:
    """Each package to packages/<index>/<file name>: the name was checked, and the index keeps duplicates apart."""
    files = []
    for index, uri in enumerate(uris):
        if _stop_asked(ctx, name):
            raise Stopped()
        file_name = uri.rsplit("/", 1)[1]
        if not PACKAGE_FILE_RULE.match(file_name):  # validated at create; checked again before it becomes a path
            raise PreparationFailed(f"{uri} does not name a package file")
        path = target / str(index) / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        _append_log(ctx, name, f"downloading {uri}")
        gcs.download_file(uri, path)
        files.append(path)
    return files


def _watch(ctx: Context, name: str, pid: int, process, *, started: float | None) -> None:
    """Wait for the trainer (ours, or re-attached after a restart), honouring cancels; record its outcome."""
    while True:
        if process is not None:
            code = process.poll()
            if code is not None:
                break
        elif not trainer_process.alive(pid, started):
            code = None
            break
        if ctx.stopping.is_set():
            log.info("training job %s: service stopping; trainer pid %s keeps running and is re-attached at the "
                     "next start", name, pid)
            return
        if ctx.cancel_event(name).is_set() or _state(ctx, name) == "CANCELLING":
            _append_log(ctx, name, "cancel requested: stopping the trainer's process group")
            trainer_process.stop_group(pid, process, started)
            _finish(ctx, name, "CANCELLED")
            return
        time.sleep(POLL_S)
    if trainer_process.group_alive(pid):  # the trainer ended but left children behind: they go with it
        trainer_process.stop_group(pid, None, None)
    _record_exit(ctx, name, trainer_process.exit_status(work_dir(ctx, name) / EXIT_NAME, code))


def _record_exit(ctx: Context, name: str, code: int | None) -> None:
    """SUCCEEDED on exit status 0, else FAILED with the trainer's last error line (a cancel still wins)."""
    if code == 0:
        _append_log(ctx, name, "the trainer finished successfully")
        _finish(ctx, name, "SUCCEEDED")
    else:
        message = trainer_process.failure_message(code, log_path(ctx, name))
        _append_log(ctx, name, message)
        _finish(ctx, name, "FAILED", errorMessage=message)


def resume(ctx: Context) -> None:
    """After a restart no training job stays RUNNING unwatched: re-attach, finish, or start again."""
    for job in ctx.store.list("job"):
        if "trainingInput" not in job or job["state"] in ENDED:
            continue
        name, pid, started = job["_name"], job.get("_pid"), job.get("_pidStarted")
        state = job["state"]
        running = bool(pid) and state in ("RUNNING", "CANCELLING") and trainer_process.alive(pid, started)
        if state == "CANCELLING":
            if running:
                trainer_process.stop_group(pid, None, started)
            _finish(ctx, name, "CANCELLED")
        elif state in ("QUEUED", "PREPARING"):
            log.info("training job %s was %s when the service stopped; preparing it again", name, state)
            ctx.store.transition(name, ("QUEUED", "PREPARING"), state="QUEUED")
            submit(ctx, name)
        elif running:
            log.info("training job %s: re-attaching to trainer pid %s", name, pid)
            _append_log(ctx, name, f"service restarted: re-attached to the trainer (pid {pid})")
            threading.Thread(target=_run_logged, args=(ctx, name, {"pid": pid, "started": started}), daemon=True,
                             name=f"train-{job['jobId']}").start()
        else:
            _record_exit(ctx, name, trainer_process.exit_status(work_dir(ctx, name) / EXIT_NAME, None))


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
    ended = job["state"] in ENDED
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

