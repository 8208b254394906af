"""`make bench`, the online floor: what one HTTP call costs here before any service code runs.

A bare ASGI app on uvicorn, started the way the service is (loopback, httptools,
uvloop, keep-alive, no access log), reads the request body and answers a JSON body
of the same size as the service's prediction. The bench calls it in the same
pattern as the service (right after a raw TensorFlow call), so the figure holds
the client's HTTP code, loopback and, on a virtual machine, waking a process
that slept while the other one computed. The service's p50 overhead minus this
floor is what the service's own code costs.
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import sys
import time

from tools import devstack


class TransportFloor:
    """The bench's handle on the floor server (a child process) and one kept-alive connection to it."""

    def __init__(self, *, request_body: bytes, response_bytes: int):
        self.port = devstack.free_port()
        self.process = subprocess.Popen([sys.executable, "-m", "bench.transport_floor", "--port", str(self.port),
                                         "--response-bytes", str(response_bytes)])
        devstack.wait_for_http(f"http://127.0.0.1:{self.port}/healthz", timeout=60, process=self.process)
        self.body = request_body
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port)

    def call_ms(self) -> float:
        started = time.perf_counter()
        self.connection.request("POST", "/floor", body=self.body, headers={"Content-Type": "application/json"})
        response = self.connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"transport floor answered {response.status}")
        return (time.perf_counter() - started) * 1000

    def close(self) -> None:
        self.connection.close()
        self.process.terminate()
        self.process.wait(timeout=30)


def _app(response_bytes: int):
    body = b'{"predictions": [' + b"0," * max((response_bytes - 20) // 2, 0) + b'0]}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--response-bytes", type=int, default=12_000)
    args = parser.parse_args(argv)
    uvicorn.run(_app(args.response_bytes), host="127.0.0.1", port=args.port, access_log=False,
                timeout_keep_alive=600, log_level="warning")


if __name__ == "__main__":
    main()
