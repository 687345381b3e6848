"""Writing one scripted HTTP reply from a test server's request handler."""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler
from typing import Any


def send_reply(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], payload: Any,
               delay: float = 0.0) -> None:
    """Send ``payload`` (bytes, or JSON) with ``status`` and ``headers`` after ``delay`` seconds; a client
    that gave up waiting (a timeout test) is not an error."""
    if delay:
        time.sleep(delay)
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    try:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
