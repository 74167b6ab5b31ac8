"""permessage-deflate is declined: offered compression is refused, compressed frames are errors.

Why declined: wsproto 1.3.2 delivers the fragments after a ping still
compressed, and inflates with no output limit (a tiny frame can become
megabytes before any size check). A server may decline an extension
(RFC 7692 section 5); every client then sends plain frames.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from helpers import OP_BINARY, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawPeer, ServerProgram

OFFER = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}


def rss_kib(server: ServerProgram) -> int:
    with open(f"/proc/{server.proc.pid}/status") as status:
        line = next(x for x in status if x.startswith("VmRSS:"))
    return int(line.split()[1])


def test_compression_offer_is_declined(start_server: Callable[..., ServerProgram]) -> None:
    """A client offering permessage-deflate gets a 101 without it."""
    server = start_server("--echo")
    peer = RawPeer(server.port, headers=OFFER)
    assert peer.status_line.startswith("HTTP/1.1 101")
    assert b"deflate" not in peer.response_head.lower()


def test_fragmented_message_with_ping_between_fragments_round_trips(
    start_server: Callable[..., ServerProgram],
) -> None:
    """Fragments with a ping in between: the pong comes at once, the message arrives whole."""
    server = start_server("--echo")
    peer = RawPeer(server.port, headers=OFFER)
    first, second = b"A" * 1000, b"B" * 1000
    peer.send(OP_TEXT, first, fin=False)
    peer.send(OP_PING, b"between")
    assert peer.read_frame() == (OP_PONG, b"between")
    peer.send(OP_CONT, second)
    assert peer.read_frame() == (OP_TEXT, first + second)


def test_compressed_bomb_is_refused_without_inflating(start_server: Callable[..., ServerProgram]) -> None:
    """A 100 KB frame that would inflate to 100 MB: 1002, and the server's memory does not grow."""
    server = start_server("--echo")
    before = rss_kib(server)
    deflate = zlib.compressobj(wbits=-15)
    bomb = deflate.compress(bytes(100 << 20)) + deflate.flush(zlib.Z_SYNC_FLUSH)
    peer = RawPeer(server.port, headers=OFFER)
    peer.send(OP_BINARY, bomb[:-4], rsv=4)  # RSV1: "this message is compressed"
    assert peer.close_code() == 1002
    assert rss_kib(server) - before < 10_000
