"""`make bench`, second raw reference: TensorFlow run the way the service runs it, in a child process.

The issue's reference is the signature called in the bench's own process with
TensorFlow's defaults, one call at a time. The service gives each op one
thread (``--intra-op-threads``, default 1) and keeps ``PREDICT_IN_FLIGHT``
batch calls in TensorFlow at once. That setting only takes effect before
TensorFlow is imported, hence a child process. Against this reference a ratio
measures the service's own cost (JSON, HTTP, GCS) and nothing its TensorFlow
settings win or lose.

The child speaks JSON lines on stdin/stdout: ``load`` (export dir, variant,
sizes), ``batch`` (seconds for every instance, inputs prepared beforehand),
``online`` (milliseconds of one one-instance call). It times its own calls, so
the pipe is never measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


class MatchedReference:
    """The parent's handle on the child: one per variant, alternated with service calls."""

    def __init__(self, *, directory: Path, variant: str, instances: int, image_size: int, batch_size: int,
                 intra_op_threads: int, in_flight: int):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        if intra_op_threads:
            env["TF_NUM_INTRAOP_THREADS"] = str(intra_op_threads)
        self.process = subprocess.Popen([sys.executable, "-m", "bench.raw_reference"], env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._ask(cmd="load", directory=str(directory), variant=variant, instances=instances,
                  image_size=image_size, batch_size=batch_size, in_flight=in_flight)

    def _ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"raw reference child exited ({self.process.wait()}) on {request['cmd']}")
        return json.loads(line)

    def batch_seconds(self) -> float:
        return self._ask(cmd="batch")["seconds"]

    def online_ms(self) -> float:
        return self._ask(cmd="online")["ms"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def _serve() -> None:
    """The child: load once, then answer commands until stdin closes."""
    import tensorflow as tf

    from bench.run import _images, _instances, _raw_inputs

    answers, sys.stdout = sys.stdout, sys.stderr  # anything else printed must not corrupt the protocol
    state: dict = {}
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "load":
            signature = tf.saved_model.load(request["directory"]).signatures["serving_default"]
            instances = _instances(request["variant"], _images(request["instances"], request["image_size"]))
            size = request["batch_size"]
            state.update(signature=signature, pool=ThreadPoolExecutor(request["in_flight"]),
                         batches=[_raw_inputs(request["variant"], instances[i:i + size])
                                  for i in range(0, len(instances), size)],
                         one=_raw_inputs(request["variant"], instances[:1]))
            for _ in range(20):
                _call(signature, state["one"])
            _all_batches(state, state["batches"][:4])
            answer = {"ok": True}
        elif request["cmd"] == "batch":
            started = time.perf_counter()
            _all_batches(state, state["batches"])
            answer = {"seconds": time.perf_counter() - started}
        else:
            started = time.perf_counter()
            _call(state["signature"], state["one"])
            answer = {"ms": (time.perf_counter() - started) * 1000}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def _all_batches(state: dict, batches: list) -> None:
    """Every batch, `in_flight` calls in TensorFlow at once, as the service's batch jobs run them."""
    signature = state["signature"]
    for _ in state["pool"].map(lambda feeds: _call(signature, feeds), batches):
        pass


def _call(signature, feeds: dict) -> dict:
    return {name: tensor.numpy() for name, tensor in signature(**feeds).items()}


if __name__ == "__main__":
    _serve()
