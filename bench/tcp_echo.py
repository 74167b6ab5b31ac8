"""Plain TCP echo server, a thread per connection: the floor for the benchmark.

python bench/tcp_echo.py [PORT [SWITCH_INTERVAL]]
"""

from __future__ import annotations

import socket
import sys
import threading


def echo(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := conn.recv(65536):
            conn.sendall(data)


def main() -> None:
    if len(sys.argv) > 2:
        sys.setswitchinterval(float(sys.argv[2]))
    listener = socket.create_server(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0), backlog=4096)
    print(f"listening on tcp://127.0.0.1:{listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=echo, args=(conn,), name=f"echo-{conn.fileno()}", daemon=True).start()


if __name__ == "__main__":
    main()
