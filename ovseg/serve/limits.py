"""ASGI middleware that bounds a request: its body's size (413) and the time a client may
take to read the response."""

from __future__ import annotations

import json


class RequestRejected(Exception):
    """A request refused before the model: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _TooLarge(RequestRejected):
    """Raised from ``receive`` past the limit; an endpoint reading the body may answer it."""


class BodySizeLimit:
    """Answer 413 when the body exceeds ``max_bytes``: at once when ``Content-Length`` says
    so, else as soon as the streamed body passes the limit."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send) -> None:
        body = json.dumps(
            {"error": f"request body larger than this server's limit of {self.max_bytes} bytes"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send)

        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(
                        413,
                        f"request body larger than this server's limit of {self.max_bytes} bytes",
                    )
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)


class SendTimeout:
    """Give up on a client that does not read its response: each ``send`` of the response
    must be taken by the connection within ``timeout_s`` seconds (the transport's buffer
    drains), else the response is abandoned and the server closes the connection."""

    def __init__(self, app, timeout_s: float):
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        import asyncio

        async def timed_send(message):
            try:
                await asyncio.wait_for(send(message), self.timeout_s)
            except TimeoutError:
                raise _SlowClient() from None

        try:
            await self.app(scope, receive, timed_send)
        except _SlowClient:
            return  # uvicorn closes a connection whose response was left incomplete


class _SlowClient(Exception):
    pass
