"""A throwaway PostgreSQL server on loopback, for tests and benchmarks (Debian's or the image's PostgreSQL 15).

``PostgresServer(directory).start()`` runs ``initdb`` once (password auth,
a generated password in a 0600 file, never a fixed one), then ``pg_ctl start``
on a free port bound to 127.0.0.1 only. PostgreSQL refuses to run as root, so
as root the server runs as the ``postgres`` user (Debian's package creates it)
and its directory is handed to that user. ``make test`` installs Debian's
``postgresql`` package where ``initdb`` is missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

SUPERUSER = "ml_engine"


def binaries() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _server_user() -> str:
    """Who runs the server when we are root: Debian's ``postgres``, else any unprivileged system user."""
    for name in ("postgres", os.environ.get("ML_ENGINE_TRAINER_USER", "ml-trainer"), "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("PostgreSQL refuses to run as root and no unprivileged user exists (useradd postgres)")


class PostgresServer:
    """One PostgreSQL cluster in ``directory`` (data, socket, log, password file)."""

    def __init__(self, directory: Path, port: int | None = None):
        self.directory = Path(directory)
        self.port = port or free_port()
        self.bin = binaries()
        if self.bin is None:
            raise RuntimeError("PostgreSQL's initdb was not found (apt-get install postgresql, or `make test`, "
                               "which installs it)")
        self.run_as = _server_user() if os.geteuid() == 0 else None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def password_file(self) -> Path:
        return self.directory / "password"

    def _run(self, *argv: str) -> None:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> PostgresServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.password_file.exists():
            self.password_file.write_text(secrets.token_urlsafe(24))
            self.password_file.chmod(0o600)
        if self.run_as:
            user = pwd.getpwnam(self.run_as)
            os.chown(self.directory, user.pw_uid, user.pw_gid)
            self.directory.chmod(0o700)
            os.chown(self.password_file, user.pw_uid, user.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=scram-sha-256",
                      f"--pwfile={self.password_file}", "--encoding=UTF8", "--no-instructions")
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off " \
                  "-c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.directory / "postgres.log"), "-o", options,
                  "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        password = quote(self.password_file.read_text().strip(), safe="")
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database (dropped first if it exists); its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
