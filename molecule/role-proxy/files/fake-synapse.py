#!/usr/bin/python3
"""Stand-in for Synapse in the role-proxy scenario (test only).

Answers every request on 127.0.0.1:PORT (argument, default 8008: the main
process; other ports stand for workers) with what it received, as JSON: the
port, the method, the request target exactly as it arrived (to prove nginx
passes the URI on without canonicalising it), the headers and the body length.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        received = 0
        while received < length:
            chunk = self.rfile.read(min(65536, length - received))
            if not chunk:
                break
            received += len(chunk)
        data = json.dumps(
            {
                "fake_upstream": True,
                "port": self.server.server_address[1],
                "method": self.command,
                "target": self.path,
                "headers": {name.lower(): value for name, value in self.headers.items()},
                "body_length": received,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_OPTIONS = _answer

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 8008), Echo).serve_forever()
