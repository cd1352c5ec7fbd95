"""Running the service with uvicorn, with a deadline for the request headers.

uvicorn waits without limit for the first request line and headers of a new connection, and
its keep-alive timer is reset by every byte, so a client trickling a header byte at a time
holds a connection open for ever. ``HeaderTimeoutH11`` closes a connection whose request
headers have not all arrived within ``header_timeout_s`` of the connection (or of the
previous response on a kept-alive one). The body has its own deadline
(``ovseg.serve.forms.read_body``) and so does the response (``ovseg.serve.limits.SendTimeout``).
"""

from __future__ import annotations

from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_MAX_CONNECTIONS = 256


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's line and headers."""

    header_timeout_s = DEFAULT_HEADER_TIMEOUT_S

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _waiting_for_headers(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if not self._waiting_for_headers():
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._waiting_for_headers() and not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


def server_config(
    app,
    host: str = "127.0.0.1",
    port: int = 8000,
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    log_level: str = "info",
):
    """A ``uvicorn.Config`` for the service: the header deadline, at most
    ``max_connections`` connections and tasks (more get uvicorn's 503), h11."""
    import uvicorn

    protocol = type(
        "HeaderTimeoutH11", (HeaderTimeoutH11,), {"header_timeout_s": float(header_timeout_s)}
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        limit_concurrency=max_connections,
        log_level=log_level,
    )
