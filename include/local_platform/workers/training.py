"""Training jobs: QUEUED -> (a free slot) -> PREPARING (download, install) -> RUNNING -> the trainer's outcome.

The trainer itself is an operating-system process (``trainer_process``); this
module moves the job through its states (each move a compare-and-set, so a
cancel is never written over), watches the trainer, honours cancels, and after a
restart re-attaches to a trainer still running or records how it ended. Every
start of a preparation is counted (``_attempts``): a job interrupted
MAX_ATTEMPTS times while preparing ends FAILED instead of crash-looping the service.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import threading
import time
from collections import deque
from pathlib import Path

from include.local_platform import gcs
from include.local_platform.context import Context
from include.local_platform.errors import invalid_argument, not_found
from include.local_platform.resources import jobs
from include.local_platform.resources.names import job_name
from include.local_platform.resources.training_input import PACKAGE_FILE_RULE
from include.local_platform.state.clock import now_rfc3339
from include.local_platform.workers import trainer_process, trainer_sandbox
from include.local_platform.workers.recovery import MAX_ATTEMPTS
from include.local_platform.workers.trainer_process import EXIT_NAME, LOG_NAME, POLL_S, PreparationFailed, Stopped

log = logging.getLogger(__name__)

LOG_READ_LIMIT = 1024 * 1024
ACTIVE = ("QUEUED", "PREPARING", "RUNNING")
ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")
#: Trainers running at once; more wait QUEUED (ml/v1 queued jobs beyond a project's quota the same way).
SLOTS = threading.BoundedSemaphore(int(os.environ.get("ML_ENGINE_TRAINING_SLOTS", "2")))


def jobs_root(ctx: Context) -> Path:
    return ctx.state_dir / "training"


def trainer_identity(ctx: Context) -> trainer_sandbox.Identity:
    return trainer_sandbox.identity(jobs_root(ctx))


def work_dir(ctx: Context, name: str) -> Path:
    """The job's own directory (its id is a checked ml/v1 name: letters, digits, underscores).

    A job started by another replica on this host keeps the directory that replica recorded (a
    replica taking over re-attaches to its trainer and reads its log and exit status there)."""
    job = ctx.store.get(name) or {}
    if job.get("_workDir") and job.get("_host") == socket.gethostname():
        return Path(job["_workDir"])
    project, job_id = name.split("/")[1], name.rsplit("/", 1)[1]
    return jobs_root(ctx) / project / job_id


def log_path(ctx: Context, name: str) -> Path:
    return work_dir(ctx, name) / LOG_NAME


def _exit_file(ctx: Context, name: str) -> Path:
    return trainer_process.home(work_dir(ctx, name)) / EXIT_NAME


def _append_log(ctx: Context, name: str, text: str) -> None:
    trainer_process.append_log(log_path(ctx, name), text)


class _WaitingJobs:
    """QUEUED jobs waiting for a slot: one dispatcher thread for all of them, a thread per running trainer only.

    The dispatcher starts the oldest waiting job whenever a slot is free, and ends a waiting job that was
    cancelled meanwhile (within a second), so a queue of any length costs no thread.
    """

    def __init__(self):
        self._waiting: deque[tuple[Context, str]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._dispatcher: threading.Thread | None = None

    def add(self, ctx: Context, name: str) -> None:
        with self._lock:
            self._waiting.append((ctx, name))
            if self._dispatcher is None or not self._dispatcher.is_alive():
                self._dispatcher = threading.Thread(target=self._dispatch, daemon=True, name="train-dispatch")
                self._dispatcher.start()
        self._wake.set()

    def slot_freed(self) -> None:
        self._wake.set()

    def _dispatch(self) -> None:
        while True:
            self._wake.wait(1.0)
            self._wake.clear()
            with self._lock:
                waiting = list(self._waiting)
            blocked = False  # once one QUEUED job finds no slot, later ones wait too (first come, first served)
            for ctx, name in waiting:
                if self._settled(ctx, name) or (not blocked and self._started(ctx, name)):
                    with self._lock:
                        self._waiting.remove((ctx, name))
                else:
                    blocked = True

    @staticmethod
    def _settled(ctx: Context, name: str) -> bool:
        """True when ``name`` needs no slot any more: stopping, gone, no longer QUEUED, or cancelled (ended here)."""
        state = None if ctx.stopping.is_set() else _state(ctx, name)
        if state == "CANCELLING":
            _finish(ctx, name, "CANCELLED")
        return state != "QUEUED"

    @staticmethod
    def _started(ctx: Context, name: str) -> bool:
        """Start the job in a thread of its own if a slot is free."""
        if not SLOTS.acquire(blocking=False):
            return False
        threading.Thread(target=_run_logged, args=(ctx, name), daemon=True,
                         name=f"train-{name.rsplit('/', 1)[1]}").start()
        return True


_WAITING = _WaitingJobs()


def submit(ctx: Context, name: str) -> None:
    """Queue the job: it starts in a thread of its own when a slot is free (training can take hours)."""
    _WAITING.add(ctx, name)


def _run_logged(ctx: Context, name: str, attach: dict | None = None) -> None:
    try:
        if attach is not None:
            _watch(ctx, name, attach["pid"], None, started=attach["started"], marker=attach.get("marker"))
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
    """Prepare and run the trainer in the slot the dispatcher took for this job; give the slot back."""
    try:
        _run_with_slot(ctx, name)
    finally:
        SLOTS.release()
        _WAITING.slot_freed()


def _run_with_slot(ctx: Context, name: str) -> None:
    with ctx.store.transaction():  # every start counts, before any work: a build that kills the service ends
        if ctx.store.transition(name, ("CANCELLING",), state="CANCELLED", endTime=now_rfc3339()) is not None:
            return
        attempt = int((ctx.store.get(name) or {}).get("_attempts", 0)) + 1
        project, job_id = name.split("/")[1], name.rsplit("/", 1)[1]
        job = ctx.store.transition(name, ("QUEUED",), state="PREPARING", startTime=now_rfc3339(),
                                   _runSince=time.time(), _attempts=attempt, _host=socket.gethostname(),
                                   _workDir=str(jobs_root(ctx) / project / job_id))
    if job is None:
        return
    if attempt > MAX_ATTEMPTS:
        _finish(ctx, name, "FAILED", errorMessage=f"The job was interrupted {attempt - 1} times while it prepared "
                "(the service stopped, e.g. a package whose build crashes it); it is not run again.")
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
    marker = secrets.token_hex(8)  # in the trainer's environment: finds its processes, setsid or not
    process = trainer_process.start(job, directory, log_path(ctx, name), marker, trainer_identity(ctx))
    started = trainer_process.start_time(process.pid)
    with ctx.store.transaction():  # a cancel that came meanwhile stays CANCELLING (the watch acts on it)
        ctx.store.revise(name, _pid=process.pid, _pidStarted=started, _trainerId=marker)
        ctx.store.transition(name, ("PREPARING",), state="RUNNING")
    log.info("training job %s RUNNING: python -m %s (pid %s, as %s)", name, job["trainingInput"]["pythonModule"],
             process.pid, trainer_identity(ctx).why)
    _watch(ctx, name, process.pid, process, started=started, marker=marker)


def _prepare(ctx: Context, name: str, job: dict, directory: Path) -> None:
    """A clean job directory, the packages downloaded and installed; Stopped on a cancel or a shutdown.

    The job's directory and its packages belong to the service; only ``home/`` belongs to the trainer
    (made afresh, so nothing an earlier attempt left there is used).
    """
    who = trainer_identity(ctx)
    shutil.rmtree(directory / "packages", ignore_errors=True)
    shutil.rmtree(trainer_process.home(directory), ignore_errors=True)
    (directory / "packages").mkdir(parents=True, exist_ok=True)
    for closed in (directory.parent, directory):  # passable, not listable
        closed.chmod(0o711)
    trainer_sandbox.own_directory(trainer_process.home(directory), who)
    files = _download_packages(ctx, name, job["trainingInput"]["packageUris"], directory / "packages")
    trainer_process.install_packages(files, directory, log_path(ctx, name), lambda: _stop_asked(ctx, name), who)
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


def _watch(ctx: Context, name: str, pid: int, process, *, started: float | None, marker: str | None) -> None:
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
            trainer_process.stop(pid, marker)
            _finish(ctx, name, "CANCELLED")
            return
        time.sleep(POLL_S)
    if trainer_process.leftovers(pid, marker):  # the trainer ended but left children behind: they go with it
        trainer_process.stop(pid, marker)
    _record_exit(ctx, name, trainer_process.exit_status(_exit_file(ctx, name), code))


def _record_exit(ctx: Context, name: str, code: int | None) -> None:
    """SUCCEEDED on exit status 0, else FAILED with the trainer's last error line (a cancel still wins)."""
    if code == 0:
        _append_log(ctx, name, "the trainer finished successfully")
        _finish(ctx, name, "SUCCEEDED")
    else:
        training_input = (ctx.store.get(name) or {}).get("trainingInput") or {}
        message = trainer_process.failure_message(code, log_path(ctx, name), trainer_process.task_type(training_input))
        _append_log(ctx, name, message)
        _finish(ctx, name, "FAILED", errorMessage=message)


def prepare(ctx: Context) -> None:
    """At start: the state dir is closed to other users but for the jobs' own directories, and who trainers
    run as is decided (and logged)."""
    jobs_root(ctx).mkdir(parents=True, exist_ok=True)
    trainer_sandbox.close_state(ctx.state_dir, jobs_root(ctx))
    log.info("trainers run as %s", trainer_identity(ctx).why)


def pending(ctx: Context) -> list[str]:
    """Training jobs not ended (running here, on another replica, or on none since a crash)."""
    return [job["_name"] for job in ctx.store.list("job", states=jobs.UNFINISHED_STATES) if "trainingInput" in job]


def adopt(ctx: Context, name: str) -> None:
    """No training job this replica takes over stays RUNNING unwatched: re-attach, finish, or start again."""
    job = ctx.store.get(name)
    if job is None or job["state"] in ENDED:
        return
    pid, started = job.get("_pid"), job.get("_pidStarted")
    state = job["state"]
    running = bool(pid) and state in ("RUNNING", "CANCELLING") and trainer_process.alive(pid, started)
    if state == "CANCELLING":
        if running:
            trainer_process.stop(pid, job.get("_trainerId"))
        _finish(ctx, name, "CANCELLED")
    elif state in ("QUEUED", "PREPARING"):
        log.info("training job %s was %s when the service stopped; preparing it again", name, state)
        ctx.store.transition(name, ("QUEUED", "PREPARING"), state="QUEUED")
        submit(ctx, name)
    elif running:
        log.info("training job %s: re-attaching to trainer pid %s", name, pid)
        _append_log(ctx, name, f"service restarted: re-attached to the trainer (pid {pid})")
        attach = {"pid": pid, "started": started, "marker": job.get("_trainerId")}
        threading.Thread(target=_run_logged, args=(ctx, name, attach), daemon=True,
                         name=f"train-{job['jobId']}").start()
    else:
        _record_exit(ctx, name, trainer_process.exit_status(_exit_file(ctx, name), None))


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

