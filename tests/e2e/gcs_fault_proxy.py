"""mitmproxy addon: a flaky GCS, in reverse mode in front of the GCS emulator.

    mitmdump --mode reverse:http://127.0.0.1:EMULATOR_PORT --listen-host 127.0.0.1 --listen-port PORT \
        --set keep_host_header=true -s tests/e2e/gcs_fault_proxy.py --set fault_rate=0.1

A share `fault_rate` of the requests is answered 503 or 429 (half each) in GCS's
JSON error shape without reaching the emulator; with `fault_first_per_kind`
the first request of each kind (method and API: the first upload, the first
download, the first metadata read or list, ...) fails too, so every kind of
call the DAGs make meets a fault at least once. `GET /_proxy/stats` answers the
counts. Objects the emulator stored with its own address in `mediaLink` (those
written by the ml/v1 service, which talks to the emulator directly) are shown
with the proxy's address, so every download of the DAG tasks passes the proxy.
It runs in mitmproxy's own environment (see scripts/install_tools.sh): it imports
nothing from the project.
"""

from __future__ import annotations

import json
import random
import threading

from mitmproxy import ctx, http

STATS_PATH = "/_proxy/stats"


class GcsFaults:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.random = random.Random()
        self.stats = {"requests": 0, "injected": {"503": 0, "429": 0}, "injected_by_kind": {}}
        self.kinds_seen: set[str] = set()

    def load(self, loader) -> None:
        loader.add_option("fault_rate", str, "0.1", "Share of requests answered 503/429 (0..1).")
        loader.add_option("fault_seed", str, "", "Seed of the fault choice (empty: random).")
        loader.add_option("upstream_origin", str, "", "The emulator's origin, as found in mediaLink URLs.")
        loader.add_option("fault_first_per_kind", bool, False, "Fail the first request of each method and API.")

    def configure(self, updated) -> None:
        if "fault_seed" in updated and ctx.options.fault_seed:
            self.random.seed(ctx.options.fault_seed)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.path.startswith(STATS_PATH):
            with self.lock:
                body = json.dumps(self.stats)
            flow.response = http.Response.make(200, body, {"Content-Type": "application/json"})
            return
        with self.lock:
            self.stats["requests"] += 1
            kind = f"{flow.request.method} {flow.request.path.split('/')[1]}"  # e.g. "POST upload"
            first = ctx.options.fault_first_per_kind and kind not in self.kinds_seen
            self.kinds_seen.add(kind)
            if not first and self.random.random() >= float(ctx.options.fault_rate):
                return
            status = 503 if self.random.random() < 0.5 else 429
            self.stats["injected"][str(status)] += 1
            by_kind = self.stats["injected_by_kind"]
            by_kind[kind] = by_kind.get(kind, 0) + 1
        reason = "backendError" if status == 503 else "rateLimitExceeded"
        message = f"Injected fault {status} (gcs_fault_proxy)"
        body = {"error": {"code": status, "message": message,
                          "errors": [{"message": message, "domain": "global", "reason": reason}]}}
        flow.response = http.Response.make(status, json.dumps(body), {"Content-Type": "application/json"})

    def response(self, flow: http.HTTPFlow) -> None:
        upstream = ctx.options.upstream_origin
        if not upstream or flow.response is None:
            return
        proxy = f"http://{flow.request.host_header or ''}"
        if proxy == "http://" or proxy == upstream:
            return
        if "json" in (flow.response.headers.get("content-type") or ""):
            text = flow.response.get_text(strict=False)
            if text and upstream in text:
                flow.response.set_text(text.replace(upstream, proxy))
        location = flow.response.headers.get("location")
        if location and location.startswith(upstream):
            flow.response.headers["location"] = proxy + location[len(upstream):]


addons = [GcsFaults()]
