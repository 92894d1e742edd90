"""The server's edge against hostile clients: which Host names it answers (DNS rebinding), no server-side
path in any answer, and JSON for the errors waitress answers itself before the app sees a request.

DNS rebinding: a web page on evil.example can point its own name at 127.0.0.1 and read a token-less local
server from the visitor's browser; the browser then sends ``Host: evil.example``. Answering only for
loopback names (and names the operator adds) closes that.
"""
from __future__ import annotations

import json
import os
import re

from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
ANY_HOST = "*"


def host_name(host_header: str) -> str:
    """``Host`` header -> lower-case name without port or brackets: "[::1]:8080" -> "::1"."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def host_allowed(host_header: str | None, allowed: tuple[str, ...]) -> bool:
    """True when the request names a host this server answers for: loopback names, or ``allowed``."""
    if ANY_HOST in allowed:
        return True
    name = host_name(host_header or "")
    return name in LOOPBACK_HOSTS or name in {host_name(h) for h in allowed}


# An absolute path in a message: "/" starting a token, not inside a word or a URL ("image/jpeg", "https://"),
# and not the punctuation after it ("cannot read /x/y.jpg: ...").
_PATH = re.compile(r"(?<![\w.:/])/(?!api/|static/|openapi\.json)[^\s'\"`,;()]*[^\s'\"`,;():.]")


def public_message(message: str, collection_dir: str) -> str:
    """An error message fit for a client: the collection's directory and any other absolute path removed."""
    for form in sorted({os.path.abspath(collection_dir), os.fspath(collection_dir)}, key=len, reverse=True):
        message = message.replace(f"collection {form}", "the collection").replace(form, "<collection>")
    return _PATH.sub("<path>", message)


class JsonErrorTask(ErrorTask):
    """waitress's own error answers (body over the limit, malformed request) in the API's JSON format."""

    def execute(self):
        e = self.request.error
        code = "request_too_large" if e.code == 413 else e.reason.lower().replace(" ", "_")
        message = (f"the request body is over the limit of {self.channel.server.adj.max_request_body_size:,} bytes"
                   if e.code == 413 else f"{e.reason}: {e.body}")
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        self.status = f"{e.code} {e.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class JsonErrorChannel(HTTPChannel):
    error_task_class = JsonErrorTask


def use_json_errors(server) -> None:
    """Make a server from ``waitress.create_server`` (one socket, or several) answer its own errors in JSON."""
    for s in [server, *getattr(server, "map", {}).values()]:
        if hasattr(s, "channel_class"):
            s.channel_class = JsonErrorChannel
