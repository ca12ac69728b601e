"""A small MPI program for the launcher's end-to-end tests (a plain test program, not an engine stand-in).

Every rank reports (rank, local rank, hostname) to rank 0 with one mpi4py gather; then rank 0 serves HTTP on
127.0.0.1 / 0.0.0.0 and the other ranks sleep. Endpoints of rank 0:
  /health           200 once serving
  /health_generate  503 for the first --warmup seconds, then 200 (404 with --no-generate, to test the fallback)
  /ranks            JSON list of {"rank", "local_rank", "host"} gathered at start
  /v1/models        a one-model list (lets clients check the URL)

Usage: mpirun -np 2 python launch_rank_server.py --port 18201 --token T [--warmup 1.5] [--no-generate]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--token", default="", help="a unique string so tests can find this job's processes")
    ap.add_argument("--warmup", type=float, default=0.0)
    ap.add_argument("--no-generate", action="store_true")
    args = ap.parse_args()

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    me = {"rank": rank, "local_rank": int(os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "-1")),
          "host": socket.gethostname(), "pid": os.getpid()}
    everyone = comm.gather(me, root=0)
    print(f"rank {rank} up on {me['host']} pid {me['pid']}", flush=True)
    if rank != 0:
        while True:  # sleep, not an MPI wait: Open MPI busy-polls in blocking calls
            time.sleep(3600)

    t0 = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/health_generate":
                if args.no_generate:
                    self._send(404, {"detail": "Not Found"})
                elif time.monotonic() - t0 < args.warmup:
                    self._send(503, {"status": "warming up"})
                else:
                    self._send(200, {"status": "ok"})
            elif self.path == "/ranks":
                self._send(200, everyone)
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": "launch-test", "object": "model"}]})
            else:
                self._send(404, {"detail": "Not Found"})

        def log_message(self, fmt: str, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"rank 0 serving http://{args.host}:{args.port}", flush=True)
    srv.serve_forever(poll_interval=0.5)


if __name__ == "__main__":
    main()
