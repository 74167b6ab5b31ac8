"""The websockets package's threading server as an echo peer for the benchmark.

Configured like ours: no compression, a 1 MiB message limit (its default).
"""

from __future__ import annotations

import sys

from websockets.sync.server import ServerConnection, serve


def echo(ws: ServerConnection) -> None:
    for message in ws:
        ws.send(message)


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    with serve(echo, "127.0.0.1", port, compression=None, max_size=1 << 20) as server:
        print(f"listening on ws://127.0.0.1:{server.socket.getsockname()[1]}/ws", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
