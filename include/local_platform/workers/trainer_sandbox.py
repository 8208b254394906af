"""What a trainer may see and use: its own user, an allow-listed environment, limits, a directory of its own.

Hosted ml/v1 ran user code on per-job machines that had only the job's identity.
Here the trainer, and the build of its packages, run on the service's machine, so:

- when the service runs as root they run as an unprivileged user (``ML_ENGINE_TRAINER_USER``,
  default ``ml-trainer``, created by ``make install`` or the image), and the service's state
  (store, deployed artifacts, scratch) is made unreadable to that user; the service's venv and
  token file are not writable by it (the venv stays readable: the trainer runs its interpreter);
- with an allow-listed environment: the documented ``CLOUD_ML_JOB``, ``CLOUD_ML_JOB_ID`` and
  ``TF_CONFIG``, the GCS endpoint, ``PATH``, the locale, CA bundles, pip's index and proxy
  settings (``PASSED``), and the trainer credentials file when one is configured; never the
  token or the service's own variables;
- in a directory of its own (its ``HOME`` and ``TMPDIR`` inside it);
- under resource limits set by ``prlimit`` before it starts (address space, CPU time, open
  files, processes) and with its log capped;
- stopped on cancel with its whole process tree: the process group, every descendant, and every
  process carrying the job's marker in its environment (a child that called ``setsid`` included).

Not given: network isolation, a filesystem view of its own, memory accounting across processes.
A real deployment runs each job in a container of its own (docs/security.md).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pwd
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

USER_ENV = "ML_ENGINE_TRAINER_USER"
DEFAULT_USER = "ml-trainer"
MARKER_ENV = "LOCAL_TRAINER_ID"
#: Variables passed through from the service's environment, and nothing else.
PASSED = ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT", "LANG", "LC_ALL", "TZ", "TF_CPP_MIN_LOG_LEVEL",
          "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL",
          "PIP_FIND_LINKS", "PIP_TRUSTED_HOST", "PIP_CERT", "PIP_DEFAULT_TIMEOUT", "HTTP_PROXY", "HTTPS_PROXY",
          "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
CREDENTIALS_ENV = "ML_ENGINE_TRAINER_CREDENTIALS"  # the job's identity on real GCS (a key file it can read)
# Copies stdin to stdout as it arrives (no buffering: the log is live) until the cap, then drops the rest.
_RELAY = """
import os, sys
cap = left = int(sys.argv[1])
while data := os.read(0, 65536):
    if left > 0:
        os.write(1, data[:left])
        if len(data) > left:
            os.write(1, b"\\n[local_platform] the log reached its cap of %d bytes; the rest is dropped\\n" % cap)
    left -= len(data)
"""
# `sh -c WRAPPER sh python relay cmd args...`: run cmd, keep its exit status in a file, relay its output.
_WRAPPER = ('python=$1; relay=$2; shift 2; { "$@"; echo "$?" > "$LOCAL_TRAINER_EXIT_FILE"; } 2>&1 '
            '| "$python" -I -S -c "$relay" "$LOCAL_TRAINER_LOG_CAP"')


@dataclass(frozen=True)
class Limits:
    """Per-process limits of a trainer (and of its package build), from the service's environment."""

    address_space: int = int(os.environ.get("ML_ENGINE_TRAINER_MAX_MEMORY_BYTES", str(32 * 1024**3)))
    cpu_seconds: int = int(os.environ.get("ML_ENGINE_TRAINER_MAX_CPU_SECONDS", str(7 * 24 * 3600)))
    open_files: int = int(os.environ.get("ML_ENGINE_TRAINER_MAX_OPEN_FILES", "4096"))
    processes: int = int(os.environ.get("ML_ENGINE_TRAINER_MAX_PROCESSES", "4096"))
    log_bytes: int = int(os.environ.get("ML_ENGINE_TRAINER_MAX_LOG_BYTES", str(256 * 1024**2)))

    def prlimit(self, *, own_user: bool) -> list[str]:
        """``prlimit`` options; the process count only for a user of its own (it counts all of a user's)."""
        options = [f"--as={self.address_space}", f"--cpu={self.cpu_seconds}", f"--nofile={self.open_files}"]
        return options + ([f"--nproc={self.processes}"] if own_user else [])


@dataclass(frozen=True)
class Identity:
    """Who trainers run as (``uid``/``gid`` of their own user, or None: the service's) and with which Python."""

    uid: int | None
    gid: int | None
    why: str
    python: str = sys.executable

    @property
    def own_user(self) -> bool:
        return self.uid is not None


@functools.cache
def identity(jobs_root: Path) -> Identity:
    """Decided once per jobs root: a user of their own when the service runs as root, that user exists, and
    it can run a Python with the service's packages in ``jobs_root``; else the service's user, with a warning.

    The service's own interpreter may sit where other users cannot reach it (pyenv under /root): then
    trainers run the system's Python of the same version, in a venv under ``jobs_root`` whose only
    packages are the service's (read-only to them), so TensorFlow is still installed once.
    """
    name = os.environ.get(USER_ENV, DEFAULT_USER)
    if os.geteuid() != 0:
        return Identity(None, None, f"the service's user (uid {os.geteuid()}): only root can switch users")
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return _shared(f"user {name!r} does not exist (make install creates it; or set {USER_ENV})")
    if entry.pw_uid == 0:
        return _shared(f"user {name!r} is root")
    failures = []
    for python in _interpreters(jobs_root):
        failure = _probe(python, entry, jobs_root)
        if not failure:
            return Identity(entry.pw_uid, entry.pw_gid, f"user {name!r} (uid {entry.pw_uid}) with {python}", python)
        failures.append(f"{python}: {failure}")
    return _shared(f"user {name!r} can run no Python with the service's packages in {jobs_root} (is a parent "
                   f"directory closed to other users?): {'; '.join(failures)}")


def _interpreters(jobs_root: Path):
    """The service's Python, then a venv of the system's Python of the same version holding its packages."""
    yield sys.executable
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for base in (f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        if os.access(base, os.X_OK):
            yield _venv_with_service_packages(base, jobs_root / "_python")
            return


def _venv_with_service_packages(base: str, target: Path) -> str:
    """``target``: a venv of ``base`` whose one .pth adds the service's site-packages (made once, reused)."""
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                    *(entry for entry in sys.path if entry.endswith("site-packages") and os.path.isdir(entry))})
    line = "import site; " + "; ".join(f"site.addsitedir({path!r})" for path in paths) + "\n"
    python = target / "bin" / "python"
    pth = next(target.glob("lib/python*/site-packages"), target) / "_service_packages.pth"
    if not (python.exists() and pth.is_file() and pth.read_text() == line):
        subprocess.run([base, "-m", "venv", "--without-pip", "--clear", str(target)], check=True,
                       capture_output=True, timeout=120)
        pth = next(target.glob("lib/python*/site-packages")) / "_service_packages.pth"
        pth.write_text(line)
        for item in [target, *target.rglob("*")]:
            if not item.is_symlink():
                item.chmod(0o755 if item.is_dir() else 0o644 | (item.stat().st_mode & 0o111))
    return str(python)


def _probe(python: str, entry: pwd.struct_passwd, jobs_root: Path) -> str:
    """'' when ``entry``'s user can start ``python`` in ``jobs_root`` and import the service's packages."""
    try:
        probe = subprocess.run([python, "-c", "import encodings, numpy, google.cloud.storage"], user=entry.pw_uid,
                               group=entry.pw_gid, extra_groups=[], cwd=jobs_root,
                               env={"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}, capture_output=True,
                               timeout=120)
    except OSError as error:
        return str(error)
    return probe.stderr.decode(errors="replace").strip()[-300:] if probe.returncode else ""


def _shared(why: str) -> Identity:
    log.warning("trainers run as the service's own user (root): %s", why)
    return Identity(None, None, f"the service's own user (root): {why}")


def environment(job_vars: dict[str, str], home: Path, marker: str, python: str) -> dict[str, str]:
    """The trainer's whole environment: the job's variables, its HOME, and the allow-listed passthrough."""
    env = {key: os.environ[key] for key in PASSED if key in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    if os.environ.get(CREDENTIALS_ENV):
        env["GOOGLE_APPLICATION_CREDENTIALS"] = os.environ[CREDENTIALS_ENV]
    env.update({
        "PATH": f"{Path(python).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "PYTHONNOUSERSITE": "1",
        MARKER_ENV: marker,
        **job_vars,
    })
    return env


def command(argv: list[str], *, own_user: bool, python: str = sys.executable) -> list[str]:
    """``argv`` under the limits, its exit status written to ``$LOCAL_TRAINER_EXIT_FILE``, its output capped."""
    return ["prlimit", *Limits().prlimit(own_user=own_user), "--", "/bin/sh", "-c", _WRAPPER, "sh", python,
            _RELAY, *argv]


def spawn(argv: list[str], *, env: dict[str, str], cwd: Path, log_file: Path, exit_file: Path,
          who: Identity) -> subprocess.Popen:
    """Start ``argv`` sandboxed, in a session of its own, output appended to ``log_file``."""
    env = {**env, "LOCAL_TRAINER_EXIT_FILE": str(exit_file), "LOCAL_TRAINER_LOG_CAP": str(Limits().log_bytes)}
    user = {"user": who.uid, "group": who.gid, "extra_groups": []} if who.own_user else {}
    with log_file.open("ab") as out:
        return subprocess.Popen(command(argv, own_user=who.own_user, python=who.python), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                start_new_session=True, **user)


def own_directory(path: Path, who: Identity) -> Path:
    """``path`` (made if missing) belonging to the trainer's user, closed to everyone else."""
    path.mkdir(parents=True, exist_ok=True)
    if who.own_user:
        os.chown(path, who.uid, who.gid)
    path.chmod(0o700)
    return path


def give(path: Path, who: Identity) -> None:
    """Hand a file or directory tree the service made (downloaded packages) to the trainer's user."""
    if not who.own_user:
        return
    for item in [path, *path.rglob("*")]:
        os.chown(item, who.uid, who.gid, follow_symlinks=False)


def close_state(state_dir: Path, jobs_root: Path) -> None:
    """Only the training tree of the state dir is open to other users, and only to pass through.

    The directories the service fills later (deployed artifacts, scratch) are made now, closed.
    """
    for private in ("artifacts", "vertex_artifacts", "scratch"):
        (state_dir / private).mkdir(mode=0o700, exist_ok=True)
    state_dir.chmod(0o711)  # passable to reach the jobs' homes, not listable
    for entry in state_dir.iterdir():
        if entry == jobs_root:
            entry.chmod(0o711)
            for project in entry.iterdir():
                if project.name != "_python":  # the trainers' interpreter stays readable
                    project.chmod(0o711)
        elif not entry.is_symlink():
            entry.chmod(0o700 if entry.is_dir() else 0o600)


def stop_tree(pid: int, marker: str | None, *, grace_s: float) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``, the trainer's group, its descendants and its marked processes."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        deadline = time.monotonic() + wait
        while True:
            targets = processes_of(pid, marker)
            if not targets:
                return
            _signal(pid, targets, sig)
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)


def _signal(pgid: int, pids: set[int], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for target in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, sig)


def processes_of(pid: int, marker: str | None) -> set[int]:
    """Live processes of one trainer: ``pid``'s group and descendants, and any carrying ``marker``."""
    parents: dict[int, int] = {}
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] == "Z":
            continue
        child = int(entry.name)
        parents[child] = int(fields[1])
        if int(fields[2]) == pid or (marker and _marked(entry, marker)):
            found.add(child)
    frontier = {pid} if pid in parents else set()
    while frontier:
        found |= frontier
        frontier = {child for child, parent in parents.items() if parent in frontier and child not in found}
    return found


def _marked(entry: Path, marker: str) -> bool:
    try:
        return f"{MARKER_ENV}={marker}".encode() in (entry / "environ").read_bytes().split(b"\0")
    except OSError:
        return False
