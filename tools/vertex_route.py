"""The route Google's own clients take to the local Vertex AI surface: a CONNECT proxy and a metadata server.

Google's gRPC clients dial ``{region}-aiplatform.googleapis.com:443`` over TLS, and the
provider's Vertex AI hooks cannot be pointed anywhere else (apache/airflow#53596). So, with
these set in a client's environment (``environment()`` prints them):

- ``grpc_proxy``: gRPC asks this proxy to CONNECT to that host; it tunnels only Vertex AI's
  hosts (and Resource Manager's, which the aiplatform SDK asks for a project number) on port
  443 to the local service's Vertex AI port, and refuses everything else;
- ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``: the service's throwaway CA (``api/vertex_tls.py``), so the
  TLS handshake for ``*.googleapis.com`` succeeds against the local service only;
- ``GCE_METADATA_HOST`` / ``GCE_METADATA_IP``: the aiplatform SDK builds some objects with
  Application Default Credentials; google-auth then asks this metadata server, which answers
  like a VM's: a project id and an access token, the service's own token. Like a VM's metadata
  server, it answers any local process that asks: only run it where that is acceptable.

Loopback only; started with the Vertex surface (``make services``), stopped by ``make stop``;
no setting above is active unless exported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger("vertex_route")
ALLOWED_HOSTS = re.compile(r"^(?:[a-z0-9-]+-)?aiplatform\.googleapis\.com$|^cloudresourcemanager\.googleapis\.com$")
SCOPES = "https://www.googleapis.com/auth/cloud-platform"


def environment(*, proxy_port: int, metadata_port: int, ca_file: Path) -> dict[str, str]:
    """What a client's environment needs to reach the local Vertex AI surface with Google's own code."""
    return {
        "grpc_proxy": f"http://127.0.0.1:{proxy_port}",
        "no_grpc_proxy": "localhost,127.0.0.1,::1",
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(ca_file),
        "GCE_METADATA_HOST": f"127.0.0.1:{metadata_port}",
        "GCE_METADATA_IP": f"127.0.0.1:{metadata_port}",
    }


async def _tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: tuple[str, int]) -> None:
    """Answer one CONNECT: tunnel an allowed host to ``target``, refuse anything else."""
    try:
        request = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=20)).decode("latin-1")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
        writer.close()
        return
    method, _, rest = request.partition(" ")
    host, _, port = rest.split(" ", 1)[0].rpartition(":")
    if method != "CONNECT" or port != "443" or not ALLOWED_HOSTS.match(host.lower()):
        log.warning("refused %s %s:%s (only Vertex AI's hosts on 443 are routed)", method, host, port)
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()
        return
    try:
        up_reader, up_writer = await asyncio.open_connection(*target)
    except OSError as error:
        writer.write(f"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n{error}".encode())
        writer.close()
        return
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await writer.drain()
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def metadata_handler(project: str, token_file: Path) -> type[BaseHTTPRequestHandler]:
    """A GCE metadata server's answers, for google-auth: project id, universe, one service account's token."""

    class Metadata(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/healthz":  # for the local stack's start-up check
                return self._answer(200, "ok")
            if self.headers.get("Metadata-Flavor") != "Google":
                return self._answer(403, "Missing Metadata-Flavor:Google header.")
            account = "/computeMetadata/v1/instance/service-accounts/default"
            answers = {
                "": "", "/computeMetadata/v1": "",
                "/computeMetadata/v1/project/project-id": project,
                "/computeMetadata/v1/project/numeric-project-id": "1234",
                "/computeMetadata/v1/universe/universe-domain": "googleapis.com",
                f"{account}/email": f"local-vertex@{project}.iam.gserviceaccount.com",
                f"{account}/scopes": SCOPES,
                account: json.dumps({"email": f"local-vertex@{project}.iam.gserviceaccount.com",
                                     "aliases": ["default"], "scopes": [SCOPES]}),
                f"{account}/token": lambda: json.dumps({"access_token": token_file.read_text().split()[0],
                                                        "expires_in": 3599, "token_type": "Bearer"}),
            }
            if path not in answers:
                return self._answer(404, "Not found")
            answer = answers[path]
            self._answer(200, answer() if callable(answer) else answer,
                         "application/json" if path in (account, f"{account}/token") else "text/plain")

        def _answer(self, status: int, text: str, content_type: str = "text/plain") -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Metadata-Flavor", "Google")
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:
            log.debug(format, *args)

    return Metadata


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port of the local service's Vertex AI surface")
    parser.add_argument("--proxy-port", type=int, required=True)
    parser.add_argument("--metadata-port", type=int, required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--project", default="local-project")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, _, port = args.target.rpartition(":")
    metadata = ThreadingHTTPServer(("127.0.0.1", args.metadata_port), metadata_handler(args.project, args.token_file))
    threading.Thread(target=metadata.serve_forever, daemon=True, name="metadata").start()

    async def serve() -> None:
        server = await asyncio.start_server(lambda r, w: _tunnel(r, w, (host, int(port))), "127.0.0.1",
                                            args.proxy_port)
        log.info("CONNECT proxy on 127.0.0.1:%d -> %s; metadata server on 127.0.0.1:%d", args.proxy_port,
                 args.target, args.metadata_port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
