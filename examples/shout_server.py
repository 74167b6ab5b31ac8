"""A server with its own per-connection logic, plugged into the session lifecycle.

    python examples/shout_server.py [PORT]

Every connection is greeted, and every text message is sent back in capitals.
Accepting, the reader thread, the limits, Ctrl+C and the close codes are the
package's; the handler only says what a session does.
"""

from __future__ import annotations

import logging
import sys

import wsthreads
from wsthreads import Connection, Message


class ShoutHandler:
    """One object serves every connection, from several threads: it keeps no state."""

    def run(self, conn: Connection) -> None:
        """The session's own thread: greet, then let the session wait for the client."""
        conn.send("hello! I shout back whatever you say")

    def on_message(self, conn: Connection, message: Message) -> None:
        """The reader thread: answer each text message in capitals."""
        if isinstance(message, str):
            conn.send(message.upper())


def main(port: int) -> int:
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO, format="%(asctime)s [%(threadName)s] %(message)s"
    )
    server = wsthreads.start_server(wsthreads.create_app(handler=ShoutHandler()), "127.0.0.1", port)
    print(f"listening on {server.url}", flush=True)
    server.serve_until_signal()  # Ctrl+C or SIGTERM: every session is closed with 1001
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8080))
