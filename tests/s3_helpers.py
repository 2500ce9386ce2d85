"""A real S3-compatible endpoint for the tests (moto's server over HTTP on 127.0.0.1), and a
small fault-injecting HTTP proxy of our own in front of it."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tui.core.cluster import free_port


@dataclass
class Rule:
    """Fault for requests whose method and path match: `times` occurrences (None: always)."""

    method: str
    path_contains: str
    action: str  # "500", "503", "403" (AccessDenied), "drop-mid-body", "stall"
    times: int | None = 1
    query_contains: str = ""
    hits: int = 0


@dataclass
class FaultProxy:
    upstream_port: int
    rules: list[Rule] = field(default_factory=list)
    rewrite: Callable[[str, str, bytes], bytes] | None = None
    seen: list[str] = field(default_factory=list)
    port: int = 0

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.seen.append(f"{self.command} {self.path}")
                rule = proxy._match(self.command, self.path)
                if rule is not None and rule.action in ("500", "503", "403"):
                    code = {"500": b"InternalError", "503": b"SlowDown",
                            "403": b"AccessDenied"}[rule.action]
                    payload = b"<Error><Code>" + code + b"</Code><Message>injected</Message></Error>"
                    self.send_response(int(rule.action))
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("Content-Type", "application/xml")
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if rule is not None and rule.action == "stall":
                    # Say nothing until the client gives up and closes the connection.
                    self.connection.settimeout(30)
                    with contextlib.suppress(OSError):
                        self.connection.recv(1)
                    self.close_connection = True
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = f"127.0.0.1:{proxy.upstream_port}"
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if proxy.rewrite is not None:
                    data = proxy.rewrite(self.command, self.path, data)
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                if self.command == "HEAD":  # no body: pass the object's length through
                    self.send_header("Content-Length", resp.getheader("Content-Length", "0"))
                    self.end_headers()
                    conn.close()
                    return
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if rule is not None and rule.action == "drop-mid-body":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def _match(self, method: str, path: str) -> Rule | None:
        for rule in self.rules:
            if rule.method == method and rule.path_contains in path and \
                    rule.query_contains in path and (rule.times is None or rule.hits < rule.times):
                rule.hits += 1
                return rule
        return None

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
