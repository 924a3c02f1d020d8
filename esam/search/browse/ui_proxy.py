"""A same-origin proxy in front of an MLflow server that opens its UI in "Model training" mode.

MLflow 3's UI (3.17) takes GenAI or Model training from the page URL's `workflowType` parameter,
else from a browser preference, localStorage `mlflow.workflowType_v1`, else GenAI: its bundle
hard-codes that default (WorkflowTypeProvider) and, with workflow-based navigation built in, reads
no experiment tag and no server setting for it. So a new browser that opens the home page, or a
link without the parameter (a run's page), lands on the GenAI overview.

The proxy adds one inline script to the UI's index page that sets the preference where the browser
has none, before MLflow's code reads it: every page then opens in Model training mode, and the
user's own toggle is kept. Only the same origin can set it, hence a proxy, not a landing page on
another port. Everything else passes through unchanged.
"""
from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from esam.errors import ConfigError

PREFERENCE = ("mlflow.workflowType_v1", '"machine_learning"')  # MLflow's useLocalStorage key (key_v<version>), JSON
# The assistant's panel opens by itself on a new browser's first page and covers a third of the runs table.
ASSISTANT_SHOWN = ("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true")
SCRIPT = ("<script>/* esam ui: MLflow opens in Model training mode unless this browser chose otherwise */"
          f"try{{for(const [k,v] of {json.dumps([PREFERENCE, ASSISTANT_SHOWN])})"
          "{if(localStorage.getItem(k)===null)localStorage.setItem(k,v)}}catch(e){}</script>")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "accept-encoding", "content-length"}
CHUNK = 1 << 16


def with_preference(page: bytes) -> bytes:
    """The index page with SCRIPT first in its <head> (it must run before MLflow's deferred bundle)."""
    at = page.find(b"<head>")
    if at < 0:
        return SCRIPT.encode() + page
    at += len(b"<head>")
    return page[:at] + SCRIPT.encode() + page[at:]


def _is_index(path: str) -> bool:
    return urlsplit(path).path in ("/", "/index.html")


class _Forward(BaseHTTPRequestHandler):
    """One request, forwarded to the upstream server; HTTP/1.0, so a response ends with its connection."""

    server: _ProxyServer

    def _forward(self) -> None:
        up = self.server.upstream
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = up.netloc
        if headers.get("Origin") == f"http://{self.headers.get('Host')}":
            del headers["Origin"]  # our own page: the upstream's cross-origin check must not block it
        index = self.command == "GET" and _is_index(self.path)
        if index:  # always the whole page, to add the script (never a 304 on a copy cached without it)
            headers = {k: v for k, v in headers.items() if k.lower() not in ("if-none-match", "if-modified-since")}
        connection = (http.client.HTTPSConnection if up.scheme == "https" else http.client.HTTPConnection)(
            up.hostname, up.port, timeout=300)
        try:
            connection.request(self.command, up.path.rstrip("/") + self.path, body=body, headers=headers)
            response = connection.getresponse()
        except OSError as err:
            connection.close()
            self.send_error(502, f"MLflow server {up.geturl()} unreachable: {err}")
            return
        try:
            self._relay(response, index)
        finally:
            connection.close()

    def _relay(self, response, index: bool) -> None:
        html = index and response.status == 200 and "text/html" in (response.getheader("Content-Type") or "")
        payload = with_preference(response.read()) if html else None
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() in HOP_BY_HOP or (html and key.lower() in ("etag", "last-modified")):
                continue
            self.send_header(key, value)
        if payload is not None:
            self.send_header("Content-Length", str(len(payload)))
        elif response.getheader("Content-Length"):
            self.send_header("Content-Length", response.getheader("Content-Length"))
        self.end_headers()
        if self.command == "HEAD":
            return
        if payload is not None:
            self.wfile.write(payload)
            return
        while chunk := response.read1(CHUNK):
            self.wfile.write(chunk)
            self.wfile.flush()  # streamed answers (the assistant's) reach the page as they come

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _forward

    def log_message(self, format, *args) -> None:
        pass  # one line per request would bury what `esam ui` prints


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, upstream: str):
        self.upstream = urlsplit(upstream)
        super().__init__(address, _Forward)


def start(host: str, port: int, upstream: str) -> _ProxyServer:
    """The proxy listening on host:port (port 0: a free one), serving in a daemon thread; .shutdown() stops it."""
    try:
        server = _ProxyServer((host, port), upstream)
    except OSError as err:
        raise ConfigError(f"cannot serve on {host}:{port} ({err.strerror or err}); choose another with --port "
                          "(--port 0: any free port)") from None
    threading.Thread(target=server.serve_forever, name="esam-ui-proxy", daemon=True).start()
    return server
