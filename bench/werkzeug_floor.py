"""Werkzeug's floor for the memory figure: its threaded server, and no WebSocket code to speak of.

The app answers the upgrade with a 101 written on the raw socket and then
echoes one small frame per read: enough for the 1000-connection case's round
trips, nothing more (no fragments, no large or pipelined frames, no pings).
What a connection costs here is what Werkzeug's thread per connection and
its request handling cost before any WebSocket library: the part of our
server's figure that is not ours to cut.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any, NoReturn

from werkzeug.serving import make_server

from wsthreads.handshake import accept_value  # one hash: the floor takes nothing else of ours

CLOSE_1000 = b"\x88\x02\x03\xe8"


def switching_protocols(environ: dict[str, Any]) -> bytes:
    accept = accept_value(environ["HTTP_SEC_WEBSOCKET_KEY"])
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ).encode()


def echo_small_frames(sock: socket.socket) -> None:
    """Echo each read as one masked frame under 126 bytes; answer a close with 1000."""
    while data := sock.recv(65536):
        if data[0] & 0x0F == 0x8:
            sock.sendall(CLOSE_1000)
            return
        length, key = data[1] & 0x7F, data[2:6]
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(data[6 : 6 + length]))
        sock.sendall(bytes([data[0], length]) + payload)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> NoReturn:
    sock: socket.socket = environ["werkzeug.socket"]
    sock.sendall(switching_protocols(environ))
    echo_small_frames(sock)
    raise ConnectionAbortedError("session over")  # Werkzeug writes no response after it


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(f"listening on ws://127.0.0.1:{server.server_port}/ws", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
