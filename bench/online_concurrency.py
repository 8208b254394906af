"""`make bench`, concurrency section: many callers of one-instance `:predict` at once, against raw TF batched alike.

`wrk` (Debian's, installed by `make bench`) drives 1, 8, 32 and 128 kept-alive
connections, each sending one-instance requests back to back for a fixed time;
its Lua `done` hook prints requests, errors and the p50/p99 latencies as JSON. Its
one thread costs little of the machine's two cores. Beside each level, raw
TensorFlow predicts batches of as many instances (one batch per connection's
request in flight) for the same time in this process, inputs prepared beforehand.
The ratio is service requests/s over raw instances/s; every request must
answer 200 with its predictions (a non-2xx or a socket error fails the bench).

Goals (issue 31): at 32 connections >= 0.7x raw TF's batched rate and p99 <= 3x
the lone caller's p99; at 1 connection no worse than the one-call overhead.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

LEVELS = (1, 8, 32, 128)
GOAL_RATIO_AT_32 = 0.7
GOAL_P99_FACTOR_AT_32 = 3.0

#: wrk's Lua side: POST the body; at the end print one JSON line with the figures the bench reads.
_LUA = """
wrk.method = "POST"
wrk.body = {body}
{headers}
done = function(summary, latency, requests)
  io.write(string.format('WRK_JSON {{"requests": %d, "duration_us": %d, "status_errors": %d, ' ..
    '"socket_errors": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}}\\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is missing: `make bench` installs Debian's wrk (apt-get install wrk)")
    return found


def write_script(directory: Path, body: bytes, headers: dict[str, str]) -> Path:
    lines = "\n".join(f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items())
    path = directory / "predict.lua"
    path.write_text(_LUA.format(body=_lua_string(body.decode()), headers=lines))
    return path


def run_wrk(url: str, script: Path, connections: int, seconds: float) -> dict:
    """One wrk run: requests/s and latency percentiles (ms); raises if any request failed."""
    command = [wrk_binary(), "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script),
               url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next((row for row in done.stdout.splitlines() if row.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
    figures = json.loads(line[len("WRK_JSON "):])
    if figures["status_errors"] or figures["socket_errors"] or not figures["requests"]:
        raise RuntimeError(f"wrk saw failed requests at {connections} connections: {figures}")
    return {"requests": figures["requests"], "per_s": figures["requests"] / (figures["duration_us"] / 1e6),
            "p50_ms": figures["p50_us"] / 1000, "p99_ms": figures["p99_us"] / 1000,
            "max_ms": figures["max_us"] / 1000}


def raw_batched_per_s(signature, feeds: dict, batch: int, seconds: float) -> float:
    """Instances/s of the raw signature called back to back on `batch`-instance inputs for `seconds`."""
    signature(**feeds)  # warm this shape up
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        {name: tensor.numpy() for name, tensor in signature(**feeds).items()}
        calls += 1
    return calls * batch / (time.perf_counter() - started)


def bench_online_concurrency(*, url: str, body: bytes, headers: dict[str, str], signature, raw_feeds,
                             seconds: float, levels=LEVELS, variant: str = "b64") -> list[dict]:
    """Each level: wrk against the service, then raw TF on batches of that size for as long.

    `raw_feeds(n)` gives prepared inputs of n instances (the same instance repeated).
    """
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as directory:
        script = write_script(Path(directory), body, headers)
        run_wrk(url, script, 1, 1)  # warm the service's path
        rows = []
        for connections in levels:
            service = run_wrk(url, script, connections, seconds)
            raw = raw_batched_per_s(signature, raw_feeds(connections), connections, seconds)
            rows.append({"variant": variant, "connections": connections, "service_per_s": service["per_s"],
                         "raw_per_s": raw, "ratio": service["per_s"] / raw, "p50_ms": service["p50_ms"],
                         "p99_ms": service["p99_ms"], "max_ms": service["max_ms"],
                         "requests": service["requests"]})
    return rows


def print_concurrency_table(rows: list[dict]) -> None:
    if not rows:
        return
    print(f"\nonline, many callers (wrk, one-instance {rows[0]['variant']} requests, kept-alive connections; "
          "raw TF on batches of as many instances):")
    print(f"{'conns':>6} {'svc req/s':>10} {'raw TF/s':>9} {'ratio':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for row in rows:
        print(f"{row['connections']:>6} {row['service_per_s']:>10.0f} {row['raw_per_s']:>9.0f} "
              f"{row['ratio']:>6.2f} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row['max_ms']:>8.2f}")
    lone = next((row for row in rows if row["connections"] == 1), None)
    at_32 = next((row for row in rows if row["connections"] == 32), None)
    if lone and at_32:
        print(f"at 32 connections: {at_32['ratio']:.2f}x raw TF (goal >= {GOAL_RATIO_AT_32}), p99 "
              f"{at_32['p99_ms'] / lone['p99_ms']:.1f}x the lone caller's (goal <= {GOAL_P99_FACTOR_AT_32})")
