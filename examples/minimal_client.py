"""The article's Go client, ported line by line: deliberately naive, for reading beside the Go.

    python examples/minimal_client.py [--url ws://localhost:8080/ws] [--interval 1]

This is the ~50-line version with no hardening at all. It mirrors the Go
client line by line and is here to be compared with it, not to be relied on.
What it gets wrong, all of which sync_client.py fixes:

- No close handshake: it closes right after its last message, whatever the
  server is still sending, and never reports a close code. The reader prints
  the server's close frame as an empty message, then fails on the HTTP bytes
  Werkzeug sends after it ("rsv is not implemented, yet").
- Two threads read one connection: ``close()`` waits up to 3 s for the
  server's close frame while the reader may already have taken it.
  (websocket-client does lock its sends; the two threads' reads race.)
- Ctrl+C gives a KeyboardInterrupt traceback, then up to that 3 s wait.
- No timeouts: ``create_connection()`` waits forever for a server that
  accepts and never answers, and ``send()`` for one that stops reading.
- No size limit: the server may send a message as big as memory.
"""

from __future__ import annotations

import argparse
import threading
import time

import websocket


def reader(ws: websocket.WebSocket) -> None:
    """The reading goroutine: print every message until the connection fails."""
    while True:
        try:
            message = ws.recv()  # _, p, err := conn.ReadMessage()
        except (websocket.WebSocketException, OSError) as err:  # if err != nil { return }
            print("read:", err, flush=True)
            return
        print("received:", message, flush=True)  # fmt.Println(string(p))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://localhost:8080/ws")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between messages")
    args = parser.parse_args()
    ws = websocket.create_connection(args.url)  # conn, _, _ := websocket.DefaultDialer.Dial(url, nil)
    try:  # defer conn.Close()
        threading.Thread(target=reader, args=(ws,)).start()  # go reader(conn)
        for i in range(1, 6):  # for i := 1; i <= 5; i++ {
            ws.send(f"client message {i} of 5")  # conn.WriteMessage(websocket.TextMessage, ...)
            time.sleep(args.interval)  # time.Sleep(time.Second)
    finally:
        ws.close()  # the deferred conn.Close()


if __name__ == "__main__":
    main()
