"""Werkzeug's floor for the memory figure: its threaded server, and no WebSocket code to speak of.

The app answers the upgrade with a 101 written on the raw socket and then
echoes one small frame per read: enough for the 1000-connection case's round
trips, nothing more (no fragments, no large or pipelined frames, no pings).
What a connection costs here is what Werkzeug's thread per connection and
its request handling cost before any WebSocket library: the part of our
server's figure that is not ours to cut.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import socket
from typing import Any, Callable, NoReturn

from werkzeug.serving import make_server

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLOSE_1000 = b"\x88\x02\x03\xe8"


def accept(environ: dict[str, Any]) -> bytes:
    key = environ["HTTP_SEC_WEBSOCKET_KEY"].encode()
    answer = base64.b64encode(hashlib.sha1(key + GUID).digest())
    return b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" + (
        b"Sec-WebSocket-Accept: " + answer + b"\r\n\r\n"
    )


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
    sock.sendall(accept(environ))
    echo_small_frames(sock)
    raise ConnectionAbortedError("session over")  # Werkzeug writes no response after it


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(f"listening on ws://127.0.0.1:{server.server_port}/ws", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
