"""A legacy-style batch job that reports its progress over a WebSocket.

    python examples/progress_client.py [ws://localhost:8080/ws]

The job is an ordinary synchronous loop; the WebSocket lives beside it in
the client's own threads. Replies from the server are printed as they come.
"""

from __future__ import annotations

import sys

from wsthreads import ConnectError, WebSocketClient


def crunch(step: int) -> int:
    """Stand-in for real work: something that takes a moment."""
    return sum(i * i for i in range(step * 100_000))


def main(url: str) -> int:
    try:
        with WebSocketClient(
            url, on_message=lambda reply: print("server says:", reply, flush=True)
        ) as client:
            for step in range(1, 11):
                crunch(step)
                client.send(f"progress {step * 10}%")
            client.send("done")
    except ConnectError as error:
        print(f"progress_client.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "ws://localhost:8080/ws"))
