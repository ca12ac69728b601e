"""A small HTTP router for the launcher's disaggregated test (a plain test program).

Serves /health: 200 only while every backend given with --backend answers its /health with 200, else 503.
Usage: python launch_router.py --port 18222 --backend http://127.0.0.1:18220 --backend http://127.0.0.1:18221
"""

from __future__ import annotations

import argparse
import json
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--backend", action="append", default=[])
    ap.add_argument("--token", default="")
    args = ap.parse_args()

    def backends_ok() -> bool:
        for b in args.backend:
            try:
                with urllib.request.urlopen(b + "/health", timeout=2) as r:
                    if r.status != 200:
                        return False
            except OSError:
                return False
        return True

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            code = (200 if backends_ok() else 503) if self.path == "/health" else 404
            data = json.dumps({"status": code}).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"router on {args.port} -> {args.backend}", flush=True)
    srv.serve_forever(poll_interval=0.5)


if __name__ == "__main__":
    main()
