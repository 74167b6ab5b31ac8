"""Thousands of connections in one server process: every bound still holds (slow).

2,000 gorilla subscribers and one that never reads, on ``bench/push_server.py``
(``create_app()`` under Werkzeug, ``app.broadcast`` from one thread): every
broadcast reaches every subscriber once and in order, the stuck one is
dropped at its write deadline without delaying the others, and SIGINT ends
the process within 3 s with every session closed 1001.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest
from helpers import ROOT, Program, open_client

pytestmark = pytest.mark.slow  # needs outside programs or runs whole programs: see the README

SUBSCRIBERS = 2000
MESSAGES = 40
SIZE = 2048
#: For the stuck subscriber, before the broadcasts: more than the kernel holds for it (about
#: 3 MB with a 4 KiB receive buffer), so its writer waits in a write from the start. The
#: outbox's limit is above it: the write deadline drops it, not the overflow policy.
FILLER = 8 << 20
WRITE_TIMEOUT = 2.0
#: SIGINT to exit: the 2 s shutdown bound, and the interpreter's own exit.
EXIT_WITHIN = 3.0


@pytest.mark.timeout(300)
def test_2000_subscribers_every_delivery_in_order_a_stuck_one_dropped_and_sigint_within_3_s(
    go_programs: dict[str, str],
) -> None:
    server = Program(
        str(ROOT / "bench" / "push_server.py"),
        *("--stack", "ours", "--wait-for", str(SUBSCRIBERS + 1), "--messages", str(MESSAGES)),
        *("--interval", "0.1", "--size", str(SIZE), "--write-timeout", str(WRITE_TIMEOUT)),
        *("--filler", str(FILLER), "--outbound-limit", str(4 * FILLER)),
    )
    try:
        port = int(server.wait_for(r"listening on ws://127\.0\.0\.1:(\d+)/ws").group(1))
        stuck = open_client(port, receive_buffer=4096)
        subscribers = subprocess.Popen(
            [
                go_programs["push"],
                *("-url", f"ws://127.0.0.1:{port}/ws", "-conns", str(SUBSCRIBERS)),
                *("-messages", str(MESSAGES), "-timeout", "120s", "-hold"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert subscribers.stdout is not None
            assert subscribers.stdout.readline().strip() == f"connected {SUBSCRIBERS}"
            figures = json.loads(subscribers.stdout.readline())
            assert figures["complete"] == SUBSCRIBERS and figures["wrong"] == 0, figures
            assert figures["deliveries"] == SUBSCRIBERS * MESSAGES
            # The stuck one: dropped once a write had waited WRITE_TIMEOUT for it.
            server.wait_for(
                r"connection lost: a write took over 2 s: the peer is not reading", stream="stderr"
            )
            started = time.monotonic()
            server.signal(signal.SIGINT)
            assert server.wait(EXIT_WITHIN + 5) == 0
            took = time.monotonic() - started
            closes = json.loads(subscribers.stdout.readline())
            assert closes == {"1001": SUBSCRIBERS}, closes
            assert took < EXIT_WITHIN, f"SIGINT to exit took {took:.1f} s"
            assert subscribers.wait(30) == 0
        finally:
            subscribers.kill()
            stuck.close()
        assert not re.search(r"Traceback|ERROR", server.output())
    finally:
        server.kill()
