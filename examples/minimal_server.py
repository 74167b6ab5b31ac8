"""The article's Go server, ported line by line: deliberately naive, for reading beside the Go.

    python examples/minimal_server.py [--port 8080] [--interval 1]

This is the ~50-line version with no hardening at all. It mirrors the Go
handler line by line and is here to be compared with it, not to be run on a
network. What it gets wrong, all of which sync_server.py fixes:

- No close handshake: ``ws.close()`` sends 1000 and does not wait for the
  client's answer (the reader then reports 1005, no code); the app returns
  and Werkzeug writes "HTTP/1.1 200 OK" onto the socket after the close frame.
- A client that leaves early makes ``send()`` raise, and ``close()`` raise
  again: Werkzeug prints both tracebacks and logs a 500.
- Ctrl+C: ``serve_forever()`` swallows it and the process exits at once,
  killing the (daemon) session threads mid-send: clients see a dropped
  connection, never a 1001 "going away".
- Sends from two threads are not locked: the loop here and simple-websocket's
  own thread (answering pings and close frames) write to one socket.
- No timeouts: a client that goes silent holds two threads forever, even
  after its session is over.
- No size limit: a client may send a message as big as memory.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import simple_websocket
from werkzeug.serving import make_server

INTERVAL = 1.0  # seconds: the article's time.Second


def reader(ws: simple_websocket.Server) -> None:
    """The reading goroutine: print every message until the connection fails."""
    while True:
        try:
            message = ws.receive()  # _, p, err := conn.ReadMessage()
        except simple_websocket.ConnectionClosed as err:  # if err != nil { return }
            print("read:", err, flush=True)
            return
        print("received:", message, flush=True)  # fmt.Println(string(p))


def handler(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] != "/ws":  # http.HandleFunc("/ws", handler): anything else is a 404
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"404 page not found\n"]
    ws = simple_websocket.Server.accept(environ)  # conn, _ := upgrader.Upgrade(w, r, nil)
    try:  # defer conn.Close()
        threading.Thread(target=reader, args=(ws,)).start()  # go reader(conn)
        for i in range(1, 6):  # for i := 1; i <= 5; i++ {
            ws.send(f"server message {i} of 5")  # conn.WriteMessage(websocket.TextMessage, ...)
            time.sleep(INTERVAL)  # time.Sleep(time.Second)
    finally:
        ws.close()  # the deferred conn.Close()
    start_response("200 OK", [])  # WSGI wants a response: Werkzeug writes it after the session
    return []


def main() -> None:
    global INTERVAL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--interval", type=float, default=INTERVAL, help="seconds between messages")
    args = parser.parse_args()
    INTERVAL = args.interval
    server = make_server("localhost", args.port, handler, threaded=True)  # http.ListenAndServe(...)
    print(f"listening on ws://localhost:{server.port}/ws", flush=True)
    server.serve_forever()  # log.Fatal(...); returns on Ctrl+C, whatever the sessions are doing


if __name__ == "__main__":
    main()
