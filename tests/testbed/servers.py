"""Test servers run inside test namespaces (`python -m tests.testbed.servers`).

HTTP on every address of the netns: GET / answers {"client": <peer ip>, "server": <local ip>}
(plus "name": NAME with `--name NAME`, to tell apart servers with the same address);
GET /stream?seconds=N sends a chunk every 50 ms for N seconds (long flows);
GET /bytes?n=N sends payload(N), N pseudo-random bytes (large downloads).
`--tcp-echo PORT` adds a plain TCP echo server on that port.
"""
from __future__ import annotations

import argparse
import json
import random
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

SERVER_NAME = ""   # --name


def payload(n: int) -> bytes:
    """The body of /bytes?n=N: the same N bytes every time, so a client can check them."""
    return random.Random(n).randbytes(n)


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def server_bind(self) -> None:
        # Skip HTTPServer.server_bind's getfqdn(): it stalls without a resolver.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/stream":
            seconds = float(parse_qs(url.query).get("seconds", ["5"])[0])
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            end = time.monotonic() + seconds
            n = 0
            while time.monotonic() < end:
                chunk = f"{n}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                n += 1
                time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
            return
        if url.path == "/bytes":
            data = payload(int(parse_qs(url.query).get("n", ["0"])[0]))
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        doc = {"client": self.client_address[0], "server": self.connection.getsockname()[0]}
        if SERVER_NAME:
            doc["name"] = SERVER_NAME
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", type=int, action="append", default=[])
    ap.add_argument("--tcp-echo", type=int, action="append", default=[])
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--name", default="")
    args = ap.parse_args()
    global SERVER_NAME
    SERVER_NAME = args.name
    servers: list[socketserver.BaseServer] = [QuietHTTPServer((args.bind, p), Handler) for p in args.http]
    servers += [EchoServer((args.bind, p), Echo) for p in args.tcp_echo]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()  # run until the test closes our stdin or kills us


if __name__ == "__main__":
    main()
