"""How the app is served: uvicorn, with the app's own rules where uvicorn alone would be lax.

- **Half-sent requests**: a request's head (request line and headers) must be complete within
  ``HEADER_TIMEOUT_S`` of the connection opening, or of the previous answer on a kept-alive connection,
  however slowly it trickles in; a body that stops arriving for ``BODY_IDLE_S`` is cut off too. Such a
  client gets a 408 (when it has sent something and no answer has started) and its connection is closed:
  no socket, task or upload buffer is held by a client that never finishes. An idle kept-alive connection
  closes after uvicorn's ``timeout_keep_alive``.
- **Malformed HTTP** that uvicorn refuses before the app sees it is answered with one JSON line, like
  every refusal of the app (:mod:`pocketswap.demo.guard`).
- **WebSocket text that is not UTF-8** is answered with one JSON error and closed with code 1007 (what
  RFC 6455 asks), logged as one line instead of uvicorn's traceback.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 15.0  # a request's head must arrive within this (slowloris)
BODY_IDLE_S = 30.0  # a body that sends nothing for this long is cut off
KEEP_ALIVE_S = 5  # an idle kept-alive connection is closed after this (uvicorn's timeout_keep_alive)
WS_MAX_BYTES = 16 * 1024 * 1024  # one WebSocket message
NOT_UTF8 = "a WebSocket text message must be UTF-8; this one is not, so the connection is closed (code 1007)"


def _json_answer(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer carrying one JSON line, closing the connection."""
    from pocketswap.demo.guard import FRAME_HEADERS

    body = (json.dumps({"error": message}) + "\n").encode()
    head = [f"HTTP/1.1 {status} {reason}".encode(), b"content-type: application/json",
            b"content-length: " + str(len(body)).encode(), b"connection: close",
            *(name + b": " + value for name, value in FRAME_HEADERS)]  # fmt: skip
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def http_protocol(header_timeout_s: float = HEADER_TIMEOUT_S, body_idle_s: float = BODY_IDLE_S) -> type:
    """uvicorn's h11 protocol with the head and body deadlines above and JSON refusals."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._waiting_since = self._last_data = self.loop.time()
            self._head_bytes = False
            self._watchdog = None
            self._watch_every = max(0.05, min(header_timeout_s, body_idle_s, 4.0) / 4)
            self._schedule()

        def _schedule(self) -> None:
            self._watchdog = self.loop.call_later(self._watch_every, self._watch)

        def _stop_watching(self) -> None:
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None

        def data_received(self, data: bytes) -> None:
            self._last_data = self.loop.time()
            if self.conn.their_state is h11.IDLE:
                self._head_bytes = True
            super().data_received(data)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.their_state is h11.IDLE:  # a kept-alive connection waits for its next request's head
                self._waiting_since, self._head_bytes = self.loop.time(), False

        def handle_websocket_upgrade(self, event) -> None:
            self._stop_watching()  # the WebSocket protocol takes the connection over
            super().handle_websocket_upgrade(event)

        def connection_lost(self, exc) -> None:
            self._stop_watching()
            super().connection_lost(exc)

        def _watch(self) -> None:
            self._watchdog = None
            if self.transport.is_closing():
                return
            now, state = self.loop.time(), self.conn.their_state
            if state is h11.IDLE and now - self._waiting_since > header_timeout_s:
                if self._head_bytes:  # some of a request came, never all of its head
                    self._time_out(f"the request's head did not arrive within {header_timeout_s:g} s")
                else:  # a connection that never sent anything (a browser's spare one): closed quietly
                    self.transport.close()
                return
            reading = not self.flow.read_paused  # paused: the app is behind, the client is not slow
            if state is h11.SEND_BODY and reading and now - self._last_data > body_idle_s:
                self._time_out(f"the request's body stopped arriving for {body_idle_s:g} s")
                return
            self._schedule()

        def _time_out(self, why: str) -> None:
            log.warning("closed a connection from %s: %s", (self.client or ("?",))[0], why)
            cycle = self.cycle
            if cycle is None or not cycle.response_started or self.conn.their_state is h11.IDLE:
                self.transport.write(_json_answer(408, "Request Timeout", why))
            self.transport.close()

        def send_400_response(self, msg: str) -> None:
            """uvicorn's refusal of malformed HTTP, as one JSON line (and one log line, no traceback)."""
            self.transport.write(_json_answer(400, "Bad Request", msg.rstrip(".") + " (malformed HTTP)"))
            self.transport.close()

    return GuardedH11


def websocket_protocol() -> type | str:
    """uvicorn's WebSocket protocol, answering text that is not UTF-8 with one JSON error and a 1007
    close; ``"auto"`` where that protocol is not the one installed."""
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:  # another uvicorn or no websockets package: uvicorn's own choice
        return "auto"

    class Utf8WebSocket(WebSocketsSansIOProtocol):
        def send_receive_event_to_app(self) -> None:
            if self.curr_msg_data_type == "text" and not self.close_sent:
                try:
                    b"".join(self.frames).decode()
                except UnicodeDecodeError:
                    self.frames = []
                    log.warning("closed the WebSocket %s from %s: a text message that is not UTF-8",
                                self.scope.get("path"), (self.client or ("?",))[0])  # fmt: skip
                    self.conn.send_text(json.dumps({"error": NOT_UTF8}).encode())
                    self.conn.send_close(1007, "text message is not UTF-8")
                    self.handle_parser_exception()  # tells the app the socket closed, sends the frames, closes
                    return
            super().send_receive_event_to_app()

    return Utf8WebSocket


def server_config(app, host: str, port: int, **timeouts: Any):
    """The uvicorn configuration every way of serving the app uses (``timeouts``: ``header_timeout_s``,
    ``body_idle_s`` for tests)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        http=http_protocol(**timeouts),
        ws=websocket_protocol(),
        ws_max_size=WS_MAX_BYTES,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
