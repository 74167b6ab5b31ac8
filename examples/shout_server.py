"""A server with its own per-connection logic, plugged into our session lifecycle.

    python examples/shout_server.py [PORT]

Every connection is greeted, and every text message is sent back in capitals.
Accepting, the reader thread, the limits, Ctrl+C and the close codes are
sync_server's; the handler only says what a session does.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import Message, Session, run_until_signal, setup_logging
from sync_server import create_app, start_server


class ShoutHandler:
    """One object serves every connection, from several threads: it keeps no state."""

    def run(self, session: Session) -> None:
        """The session's own thread: greet, then let the session wait for the client."""
        session.send("hello! I shout back whatever you say")

    def on_message(self, session: Session, message: Message) -> None:
        """The reader thread: answer each text message in capitals."""
        if isinstance(message, str):
            session.send(message.upper())


def main(port: int) -> int:
    setup_logging()
    server = start_server(create_app(handler=ShoutHandler()), "127.0.0.1", port)
    print(f"listening on {server.url}", flush=True)
    run_until_signal(server.stopped, on_signal=server.shutdown)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8080))
