"""A local ml/v1 service of a test's own that may die (kill -9 at crash points) and be started again.

Killing the session's shared service would disturb every other test, so crash
tests start their own, with the fault switch enabled (`ML_ENGINE_ENABLE_FAULTS`).
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.conftest import ServiceHandle
from tools import devstack

LIFE_TIMEOUT_S = 240


@pytest.fixture
def crashing_service(gcs_emulator, tmp_path):
    port = devstack.free_port()
    server = devstack.ml_service(port=port, state_dir=tmp_path / "state", gcs_host=gcs_emulator,
                                 log_path=tmp_path / "service.log")
    server.env["ML_ENGINE_ENABLE_FAULTS"] = "1"
    server.start(timeout=120)
    yield ServiceHandle(server=server, port=port)
    server.stop()


class Lives:
    """Start the service again after each death, optionally with crash points armed from the start."""

    def __init__(self, service: ServiceHandle):
        self.service = service
        self.deaths = 0

    def wait_death(self, timeout: float = LIFE_TIMEOUT_S) -> None:
        process = self.service.server.process
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the service did not crash; log:\n{self.service.server.log_tail()}")
            time.sleep(0.2)
        assert process.returncode == -9, self.service.server.log_tail()
        self.deaths += 1

    def restart(self, crash_at: str = ""):
        self.service.server.env["ML_ENGINE_CRASH_AT"] = crash_at
        self.service.server.start(timeout=120)
        return self.service.build_api()


class Supervisor(threading.Thread):
    """Like a restart policy (systemd, compose): starts the service again whenever it dies.

    Life k+1 starts with `plan[k]` armed (ML_ENGINE_CRASH_AT), then with nothing once the plan is used up.
    """

    def __init__(self, lives: Lives, plan: list[str]):
        super().__init__(daemon=True, name="service-supervisor")
        self.lives = lives
        self.plan = list(plan)
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.done.is_set():
                if self.lives.service.server.process.poll() is None:
                    time.sleep(0.1)
                    continue
                self.lives.wait_death()
                self.lives.restart(crash_at=self.plan.pop(0) if self.plan else "")
        except BaseException as error:  # reported by stop()
            self.error = error

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=LIFE_TIMEOUT_S)
        if self.error is not None:
            raise self.error
