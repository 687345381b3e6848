"""A cap on request body size, checked before the body is read whole.

Without it a client could post a body of any size: the server would hold it in
memory, parse it and tokenize it before the prompt-length check turned it away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: a request whose body exceeds ``max_bytes`` is answered by ``refusal()``.

    ``refusal`` makes the response (an ASGI app, e.g. the server's 413 error
    object). A declared ``Content-Length`` over the cap is refused before
    anything is read; a chunked body is counted as it arrives and refused once past it.
    """

    def __init__(self, app: Any, max_bytes: int, refusal: Callable[[], Any]):
        self.app, self.max_bytes, self.refusal = app, max_bytes, refusal

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self.refusal()(scope, receive, send)
            return
        received = 0
        over = False

        async def counted_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise _BodyTooLarge
            return message

        started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:  # whatever the app made of the interrupted read, the client gets the 413
                return
            started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if over and not started:
            await self.refusal()(scope, receive, send)
