"""The websockets package's threading server as an echo peer for the benchmark.

Configured like ours: no compression unless asked for (``websockets_echo.py PORT deflate``),
a 1 MiB message limit (its default).
"""

from __future__ import annotations

import sys

from websockets.sync.server import ServerConnection, serve


def echo(ws: ServerConnection) -> None:
    for message in ws:
        ws.send(message)


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    compression = sys.argv[2] if len(sys.argv) > 2 else None
    # websockets holds compressed frames to max_size too, and 1 MiB of random bytes
    # compresses to a little more: with compression, room for it.
    max_size = 2 << 20 if compression else 1 << 20
    with serve(echo, "127.0.0.1", port, compression=compression, max_size=max_size) as server:
        print(f"listening on ws://127.0.0.1:{server.socket.getsockname()[1]}/ws", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
