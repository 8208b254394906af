"""tools.airflow_stack's secrets: files never readable by others, no static admin password off loopback.

Nothing is started here: the stack's environment and files are built under tmp dirs.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import stat
from pathlib import Path

import pytest

from tools import airflow_stack, devstack
from tools.airflow_stack import ADMIN_USER, DEFAULT_ADMIN_PASSWORD, AirflowStack

LOOPBACK = ["127.0.0.1", "127.0.0.2", "localhost", "::1"]
NOT_LOOPBACK = ["0.0.0.0", "::", "192.168.1.20", "10.0.0.5", "airflow.example.com", ""]


class FileSpy:
    """Checks the state dir after every call that can create, fill or move a file.

    Fails when a file under `root` is readable or writable by group or other at any such moment, or when
    a new file appears other than through ``os.open(O_CREAT | O_EXCL)`` with a mode closed to others.
    """

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.root = root
        self._read = lambda path, real_open=io.open: real_open(path, "rb").read()
        self.seen = self._files()
        self.seen_inodes = {path.stat().st_ino for path in self.seen}
        self.leftovers = {path: self._identity(path) for path in self.seen}  # files there before: not ours
        self.exposed: list[str] = []
        self.opens: list[tuple[str, int, int]] = []
        real_os_open = os.open

        def os_open(path, flags, mode=0o777, *args, **kwargs):
            fd = real_os_open(path, flags, mode, *args, **kwargs)
            self.opens.append((str(path), flags, mode))
            self._check(f"os.open({path})", os_open=(flags, mode))
            return fd

        monkeypatch.setattr(os, "open", os_open)
        for owner, name in ((io, "open"), (builtins, "open"), (os, "replace"), (os, "rename"), (os, "chmod"),
                            (os, "write"), (Path, "write_text"), (Path, "write_bytes"), (Path, "touch"),
                            (Path, "chmod"), (Path, "replace"), (Path, "rename")):
            label = f"{getattr(owner, '__name__', owner)}.{name}"
            monkeypatch.setattr(owner, name, self._wrap(getattr(owner, name), label))

    def _files(self) -> set[Path]:
        return {p for p in self.root.rglob("*") if p.is_file()} if self.root.exists() else set()

    def _wrap(self, real, label):
        def call(*args, **kwargs):
            result = real(*args, **kwargs)
            self._check(label)
            if hasattr(result, "write") and hasattr(result, "close"):  # an open file: check after each write
                return _CheckedFile(result, lambda: self._check(f"{label}().write"))
            return result

        return call

    def _identity(self, path: Path) -> tuple[int, bytes]:
        return path.stat().st_ino, self._read(path)

    def _check(self, label, os_open=None):
        files = self._files()
        for path in files:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077 and self.leftovers.get(path) != self._identity(path):  # new or rewritten: exposed
                self.exposed.append(f"{path.relative_to(self.root)} mode {oct(mode)} after {label}")
        inodes = {path.stat().st_ino: path for path in files}
        for path in files - self.seen:
            flags, mode = os_open or (0, 0o777)
            exclusive = flags & os.O_CREAT and flags & os.O_EXCL and not mode & 0o077
            moved = path.stat().st_ino in self.seen_inodes  # renamed from a file already checked
            if not (exclusive or moved):
                self.exposed.append(f"{path.relative_to(self.root)} created by {label}, not os.open(O_EXCL, 0o600)")
        self.seen, self.seen_inodes = files, set(inodes)


class _CheckedFile:
    def __init__(self, file, check):
        self._file, self._check = file, check

    def write(self, data):
        written = self._file.write(data)
        self._file.flush()
        self._check()
        return written

    def __enter__(self):
        self._file.__enter__()
        return self

    def __exit__(self, *exc):
        return self._file.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._file, name)


@pytest.fixture
def umask():
    """The loosest usual umask (022 lets everyone read new files), restored afterwards."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
@pytest.mark.parametrize("leftover", [None, 0o644, 0o600], ids=["new", "old-0644-file", "old-0600-file"])
def test_secret_files_are_never_readable_by_others(tmp_path, monkeypatch, umask, host, leftover):
    """Passwords file, admin password, API and JWT secrets, the service token: 0600 from their first byte."""
    monkeypatch.delenv("ML_ENGINE_TOKEN", raising=False)
    stack = AirflowStack(state_dir=tmp_path, host=host, gcs_port=1234, ml_port=5678)
    passwords = stack.airflow_home / "simple_auth_manager_passwords.json"
    if leftover is not None:  # a file left by an earlier start (or an older version of the tool)
        passwords.parent.mkdir(parents=True, exist_ok=True)
        passwords.write_text(json.dumps({ADMIN_USER: "old"}))
        passwords.chmod(leftover)
    spy = FileSpy(tmp_path, monkeypatch)
    stack.environment()
    written = stack.write_passwords()
    assert spy.exposed == []
    assert written == passwords and json.loads(passwords.read_text()) == {ADMIN_USER: stack.password}
    assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
    assert not [p for p in stack.airflow_home.iterdir() if p.name.startswith(passwords.name + ".")]  # no temp left


def test_passwords_file_is_created_with_o_excl_and_mode_0600(tmp_path, monkeypatch, umask):
    stack = AirflowStack(state_dir=tmp_path)
    spy = FileSpy(tmp_path, monkeypatch)
    path = stack.write_passwords()
    creations = [(flags, mode) for name, flags, mode in spy.opens if Path(name).parent == path.parent]
    assert creations, "the passwords file is not created through os.open"
    for flags, mode in creations:
        assert flags & os.O_CREAT and flags & os.O_EXCL and mode == 0o600, (oct(flags), oct(mode))
    stack.password = "changed"  # a rewrite goes the same way and leaves 0600
    stack.write_passwords()
    assert json.loads(path.read_text()) == {ADMIN_USER: "changed"} and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert spy.exposed == []


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_keeps_the_documented_local_password(tmp_path, host):
    stack = AirflowStack(state_dir=tmp_path, host=host)
    assert stack.password == DEFAULT_ADMIN_PASSWORD
    assert "password admin" in stack.password_hint()


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_non_loopback_bind_gets_a_generated_password(tmp_path, host):
    stack = AirflowStack(state_dir=tmp_path, host=host)
    assert stack.password != DEFAULT_ADMIN_PASSWORD and len(stack.password) >= 32
    path = stack.admin_password_file
    assert path.read_text() == stack.password and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert AirflowStack(state_dir=tmp_path, host=host).password == stack.password  # kept across restarts
    assert AirflowStack(state_dir=tmp_path / "other", host=host).password != stack.password
    stack.write_passwords()
    written = json.loads((stack.airflow_home / "simple_auth_manager_passwords.json").read_text())
    assert written == {ADMIN_USER: stack.password}
    hint = stack.password_hint()  # how to read it, not the password itself (terminals and CI logs keep output)
    assert f"cat {path}" in hint and stack.password not in hint


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_non_loopback_bind_refuses_the_static_password(tmp_path, host):
    with pytest.raises(ValueError, match="not loopback"):
        AirflowStack(state_dir=tmp_path, host=host, password=DEFAULT_ADMIN_PASSWORD)


@pytest.mark.parametrize("host", NOT_LOOPBACK + LOOPBACK)
def test_a_given_password_is_kept(tmp_path, host):
    stack = AirflowStack(state_dir=tmp_path, host=host, password="given-s3cret")
    assert stack.password == "given-s3cret"
    assert "given-s3cret" not in stack.password_hint()


CLI_CASES = [
    # (--host, AIRFLOW_ADMIN_PASSWORD, what the stack gets)
    ("127.0.0.1", None, "admin"),
    ("127.0.0.1", "mine", "mine"),
    ("0.0.0.0", None, "generated"),
    ("0.0.0.0", "", "generated"),
    ("0.0.0.0", "mine", "mine"),
    ("192.168.1.20", None, "generated"),
    ("0.0.0.0", "admin", "refused"),
]


@pytest.mark.parametrize(("host", "given", "expected"), CLI_CASES)
def test_cli_never_gives_a_non_loopback_bind_the_static_password(tmp_path, monkeypatch, capsys, host, given,
                                                                 expected):
    started = []
    monkeypatch.setattr(airflow_stack, "_start", started.append)
    monkeypatch.setattr(airflow_stack, "_stop", lambda state_dir: None)
    if given is None:
        monkeypatch.delenv("AIRFLOW_ADMIN_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW_ADMIN_PASSWORD", given)
    argv = ["start", "--state-dir", str(tmp_path), "--host", host, "--services", "none"]
    if expected == "refused":
        with pytest.raises(SystemExit) as caught:
            airflow_stack.main(argv)
        assert caught.value.code == 1 and "not loopback" in capsys.readouterr().err
        assert started == []
        return
    airflow_stack.main(argv)
    [stack] = started
    if expected == "generated":
        assert stack.password not in (DEFAULT_ADMIN_PASSWORD, "") and len(stack.password) >= 32
        assert stack.password == stack.admin_password_file.read_text()
    else:
        assert stack.password == expected


def test_start_prints_how_to_read_a_generated_password(tmp_path, monkeypatch, capsys):
    """`make airflow` on 0.0.0.0 says where the password is, and does not print it."""
    stack = AirflowStack(state_dir=tmp_path, host="0.0.0.0", local_services=False)
    dags = {dag_id: {"is_paused": False, "timetable_summary": None} for dag_id in airflow_stack.PROJECT_DAGS}
    monkeypatch.setattr(AirflowStack, "start", lambda self, **kw: self)
    monkeypatch.setattr(AirflowStack, "wait_dags", lambda self, **kw: dags)
    airflow_stack._start(stack)
    out = capsys.readouterr().out
    assert f"cat {stack.admin_password_file}" in out and stack.password not in out


def test_devstack_secret_files_are_created_0600(tmp_path, monkeypatch, umask):
    """The API/JWT secrets and the service token the stack makes through devstack.secret_file."""
    spy = FileSpy(tmp_path, monkeypatch)
    devstack.secret_file(tmp_path / "airflow" / ".jwt_secret")
    devstack.service_token_file(tmp_path)
    assert spy.exposed == []
