"""HTTP connections that cost the server nothing once they stop making progress.

uvicorn bounds a keep-alive connection's idle time only after a response, and its
``limit_concurrency`` answers 503 only once a request's headers are complete: a client
that opens connections and never finishes its headers would hold each one (a socket, a
file descriptor, memory) forever. ``guarded_protocol`` adds the two bounds a reverse proxy
would give: a deadline for every request's headers, and a cap on open connections, past
which a new one gets a JSON 503 and is closed at once.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle


def _busy_response(limit: int) -> bytes:
    body = json.dumps({"error": f"the server has {limit} connections open; retry shortly"}).encode()
    head = f"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a header deadline and a connection cap (set by ``guarded_protocol``)."""

    max_connections: int
    header_timeout_s: float
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(_busy_response(self.max_connections))
            transport.close()
            return
        self._arm(None)

    def on_response_complete(self) -> None:
        """Count the idle deadline from this answer, not from a timer tick that may come a moment later."""
        super().on_response_complete()
        if self._deadline is not None and not self.transport.is_closing():
            self._deadline.cancel()
            self._arm(self.cycle)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self, seen: RequestResponseCycle | None) -> None:
        self._deadline = self.loop.call_later(self.header_timeout_s, self._enforce_deadline, seen)

    def _enforce_deadline(self, seen: RequestResponseCycle | None) -> None:
        """Close a connection on which no request began within the deadline and none is running.

        A request begins when its headers are complete (uvicorn then makes a new cycle),
        so this closes both a connection trickling its headers and one idling between
        requests; an upload or an inference in progress keeps its connection.
        """
        if self.transport.is_closing():
            return
        running = self.cycle is not None and not self.cycle.response_complete
        if self.cycle is seen and not running:
            self.transport.close()
        else:
            self._arm(self.cycle)


def guarded_protocol(max_connections: int, header_timeout_s: float) -> type[GuardedH11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these two limits."""
    limits = {"max_connections": max_connections, "header_timeout_s": header_timeout_s}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), limits)
