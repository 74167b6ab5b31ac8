"""permessage-deflate without sockets: the negotiation both ways, and zlib's work bounded.

The offers are the ones real clients make: Chromium and websockets
(``permessage-deflate; client_max_window_bits``), Firefox (``permessage-deflate``),
gorilla (both ``no_context_takeover`` parameters), Autobahn (all of them).
"""

from __future__ import annotations

import os
import tracemalloc
import zlib
from typing import Any

import pytest

from wsthreads import frames
from wsthreads.deflate import (
    INFLATE_STEP,
    Agreement,
    Deflate,
    accept,
    answer,
    compression_setting,
    offer,
    parse,
)

CHROMIUM = "permessage-deflate; client_max_window_bits"
FIREFOX = "permessage-deflate"
GORILLA = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
AUTOBAHN = "permessage-deflate; client_no_context_takeover; client_max_window_bits"


def agreed(header: str, setting: Deflate | None = None) -> tuple[str, Agreement]:
    answered = answer(header, setting or Deflate())
    assert answered is not None
    return answered


# --- the server's answer ---------------------------------------------------------


def test_a_browsers_offer_gets_both_windows_limited_and_context_takeover() -> None:
    extension, agreement = agreed(CHROMIUM)
    assert extension == "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
    assert agreement == Agreement(12, True, 12, True)


def test_an_offer_without_client_max_window_bits_leaves_the_clients_window_alone() -> None:
    extension, agreement = agreed(FIREFOX)
    assert extension == "permessage-deflate; server_max_window_bits=12"
    assert agreement.receive_window_bits == 15  # the client may use any window: we inflate with 15


def test_gorillas_offer_is_answered_with_both_no_context_takeover_parameters() -> None:
    """gorilla's client fails a 101 that lacks either."""
    extension, agreement = agreed(GORILLA)
    assert "server_no_context_takeover" in extension and "client_no_context_takeover" in extension
    assert not agreement.send_context_takeover and not agreement.receive_context_takeover


def test_a_client_that_does_without_context_takeover_keeps_it_for_ours() -> None:
    extension, agreement = agreed(AUTOBAHN)
    assert extension.startswith("permessage-deflate; client_no_context_takeover;")
    assert agreement.send_context_takeover and not agreement.receive_context_takeover


def test_without_context_takeover_the_server_asks_the_client_to_do_without_too() -> None:
    extension, agreement = agreed(CHROMIUM, Deflate(context_takeover=False))
    assert "server_no_context_takeover; client_no_context_takeover" in extension
    assert not agreement.send_context_takeover and not agreement.receive_context_takeover


@pytest.mark.parametrize(("asked", "used"), [("9", 9), ("12", 12), ("15", 12), ('"10"', 10)])
def test_the_window_the_client_allows_us_is_honoured(asked: str, used: int) -> None:
    extension, agreement = agreed(f"permessage-deflate; server_max_window_bits={asked}")
    assert f"server_max_window_bits={used}" in extension
    assert agreement.send_window_bits == used


def test_a_client_limiting_its_own_window_is_answered_within_it() -> None:
    extension, agreement = agreed("permessage-deflate; client_max_window_bits=10")
    assert "client_max_window_bits=10" in extension and agreement.receive_window_bits == 10


def test_a_window_of_8_bits_is_agreed_and_our_messages_go_uncompressed() -> None:
    """zlib cannot compress within 256 bytes; RFC 7692 lets a side send any message as it is."""
    _, agreement = agreed("permessage-deflate; server_max_window_bits=8")
    assert agreement.send_window_bits == 8 and agreement.compressor() is None


@pytest.mark.parametrize(
    "offer_",
    [
        "permessage-deflate; server_max_window_bits",  # a value is required
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=09",
        "permessage-deflate; client_max_window_bits=ten",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; mystery",
    ],
)
def test_an_offer_the_rfc_does_not_allow_is_declined(offer_: str) -> None:
    assert answer(offer_, Deflate()) is None


def test_the_first_acceptable_offer_is_taken() -> None:
    header = (
        "x-webkit-deflate-frame, permessage-deflate; mystery, permessage-deflate; server_max_window_bits=10"
    )
    extension, agreement = agreed(header)
    assert agreement.send_window_bits == 10 and "mystery" not in extension


@pytest.mark.parametrize(
    "header", ["permessage-deflate;", 'permessage-deflate; a="b', ";;", "per message", "é"]
)
def test_a_malformed_header_declines_compression_without_an_error(header: str) -> None:
    assert answer(header, Deflate()) is None


def test_the_header_parser_reads_lists_quotes_and_case() -> None:
    assert parse(' Permessage-Deflate ; Client_Max_Window_Bits="1\\0" ,, foo') == [
        ("permessage-deflate", [("client_max_window_bits", "10")]),
        ("foo", []),
    ]


@pytest.mark.parametrize(
    "header",
    [
        "x-foo; a; a, permessage-deflate",
        "permessage-deflate; client_max_window_bits; client_max_window_bits, permessage-deflate",
    ],
)
def test_a_parameter_given_twice_declines_its_own_offer_only(header: str) -> None:
    extension, _ = agreed(header)
    assert extension == "permessage-deflate; server_max_window_bits=12"


# --- the client's offer and its check of the answer --------------------------------


def test_the_clients_offer_is_a_browsers_and_without_context_takeover_says_so() -> None:
    assert offer(Deflate()) == CHROMIUM
    assert (
        offer(Deflate(context_takeover=False))
        == f"{CHROMIUM}; server_no_context_takeover; client_no_context_takeover"
    )


@pytest.mark.parametrize("setting", [Deflate(), Deflate(window_bits=10), Deflate(context_takeover=False)])
def test_what_the_server_agrees_is_what_the_client_reads_from_its_answer(setting: Deflate) -> None:
    """The two ends of one connection: each side sends what the other inflates."""
    extension, server = agreed(offer(setting), Deflate(window_bits=11))
    client = accept(extension, setting)
    assert client is not None
    assert (client.send_window_bits, client.send_context_takeover) == (
        min(server.receive_window_bits, setting.window_bits),
        server.receive_context_takeover,
    )
    assert (client.receive_window_bits, client.receive_context_takeover) == (
        server.send_window_bits,
        server.send_context_takeover,
    )


def test_no_extension_in_the_answer_means_no_compression() -> None:
    assert accept("", Deflate()) is None and accept("  ", None) is None


@pytest.mark.parametrize(
    ("header", "setting", "problem"),
    [
        ("permessage-deflate", None, "extension 'permessage-deflate' was never offered"),
        ("x-webkit-deflate-frame", Deflate(), "extension 'x-webkit-deflate-frame' was never offered"),
        ("permessage-deflate, permessage-deflate", Deflate(), "agreed to permessage-deflate more than once"),
        ("permessage-deflate; mystery", Deflate(), "unknown permessage-deflate parameter 'mystery'"),
        ("permessage-deflate; server_max_window_bits=20", Deflate(), "must be 8 to 15, not '20'"),
        ("permessage-deflate; client_max_window_bits", Deflate(), "must be 8 to 15, not None"),
        ("permessage-deflate;", Deflate(), "malformed Sec-WebSocket-Extensions"),
        (",", Deflate(), "malformed Sec-WebSocket-Extensions ',': no extension in the list"),
        (" , ", None, "malformed Sec-WebSocket-Extensions"),
        ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", Deflate(), "twice"),
        ("permessage-deflate", Deflate(context_takeover=False), "server_no_context_takeover was asked for"),
    ],
)
def test_an_answer_the_client_did_not_ask_for_is_one_line(
    header: str, setting: Deflate | None, problem: str
) -> None:
    with pytest.raises(ValueError) as raised:
        accept(header, setting)
    assert problem in str(raised.value) and "\n" not in str(raised.value)


# --- the setting ---------------------------------------------------------------


def test_the_setting_takes_deflate_a_deflate_or_none() -> None:
    assert compression_setting("deflate") == Deflate()
    assert compression_setting(None) is None
    assert compression_setting(Deflate(window_bits=9)) == Deflate(window_bits=9)
    with pytest.raises(ValueError, match='compression is None \\(off\\), "deflate" or a Deflate'):
        compression_setting("gzip")
    with pytest.raises(ValueError, match="compression is None"):
        compression_setting(True)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"window_bits": 8}, "window_bits must be a whole number from 9 to 15: 8"),
        ({"window_bits": 16}, "window_bits must be"),
        ({"window_bits": True}, "window_bits must be"),
        ({"memory_level": 0}, "memory_level must be a whole number from 1 to 9: 0"),
    ],
)
def test_a_setting_zlib_cannot_use_is_one_line(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Deflate(**fields)


# --- compressing and inflating -----------------------------------------------------

MESSAGES = [b'{"symbol":"ACME","bid":101.25,"ask":101.27,"n":%d}' % n for n in range(200)] + [
    b"",
    bytes(100_000),
]


@pytest.mark.parametrize("takeover", [True, False])
def test_messages_round_trip_in_pieces_of_any_size(takeover: bool) -> None:
    agreement = Agreement(12, takeover, 12, takeover)
    compressor, decompressor = agreement.compressor(), agreement.decompressor(None)
    assert compressor is not None
    for n, message in enumerate(MESSAGES):
        data = compressor.compress(message)
        step = 1 + n % 7
        pieces = [data[at : at + step] for at in range(0, len(data), step)] or [b""]
        inflated = b"".join(
            b"".join(decompressor.inflate(piece, end=i == len(pieces) - 1)) for i, piece in enumerate(pieces)
        )
        assert inflated == message


def test_context_takeover_is_what_makes_small_repeating_messages_small() -> None:
    """The reason it is on by default: a JSON push shrinks several times more with it."""
    sizes = {}
    for takeover in (True, False):
        compressor = Agreement(12, takeover, 12, takeover).compressor()
        assert compressor is not None
        sizes[takeover] = sum(len(compressor.compress(m)) for m in MESSAGES[:200])
    assert sizes[True] * 3 < sizes[False]


def test_without_context_takeover_no_zlib_object_outlives_a_message() -> None:
    agreement = Agreement(12, False, 12, False)
    compressor, decompressor = agreement.compressor(), agreement.decompressor(None)
    assert compressor is not None
    decompressor.inflate(compressor.compress(b"hello"), end=True)
    assert compressor._stream is None and decompressor._stream is None
    decompressor.inflate(compressor.compress(b"hello")[:3], end=False)
    assert decompressor._stream is not None  # only while a message is in progress


def bomb(size: int) -> bytes:
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (deflate.compress(bytes(size)) + deflate.flush(zlib.Z_SYNC_FLUSH))[:-4]


@pytest.mark.parametrize("piece", [1 << 20, 1000, 1])
@pytest.mark.slow
def test_a_bomb_stops_at_the_limit_having_cost_no_more_than_it(piece: int) -> None:
    """100 KiB that would inflate to 100 MiB: 1009 after at most the 1 MiB limit, in memory too."""
    data = bomb(100 << 20)
    assert len(data) < 110_000
    decompressor = Agreement(15, True, 15, True).decompressor(1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(frames.ProtocolError) as raised:
            for at in range(0, len(data), piece):
                decompressor.inflate(data[at : at + piece], end=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert raised.value.code == 1009
    # The limit, a step of zlib's, and the piece read (and zlib's copy of what it left of it).
    assert peak < (1 << 20) + 2 * INFLATE_STEP + 2 * min(piece, len(data))
    assert at < 2000  # it stopped reading at about 1 MiB inflated (1,000 times less on the wire)


@pytest.mark.parametrize("size", [(1 << 16) - 1, 1 << 16])
def test_a_message_of_exactly_the_limit_inflates_and_one_byte_more_does_not(size: int) -> None:
    decompressor = Agreement(15, False, 15, False).decompressor(1 << 16)
    assert len(b"".join(decompressor.inflate(bomb(size), end=True))) == size
    with pytest.raises(frames.ProtocolError, match="once inflated"):
        decompressor.inflate(bomb(size + 2), end=True)


def test_data_that_is_not_deflate_is_a_protocol_error() -> None:
    decompressor = Agreement(15, True, 15, True).decompressor(None)
    with pytest.raises(frames.ProtocolError) as raised:
        decompressor.inflate(b"\xff\xff\xff\xff", end=True)
    assert raised.value.code == 1002


@pytest.mark.parametrize("pieces", [1, 3])
def test_data_after_a_final_block_is_1002_not_kept(pieces: int) -> None:
    """zlib keeps what follows the end of a deflate stream, unread: 32 MiB would be 32 MiB held."""
    decompressor = Agreement(15, True, 15, True).decompressor(1 << 20)
    data = b"\x03\x00" + bytes(3 << 20)  # an empty final block, then 3 MiB
    step = len(data) // pieces + 1
    with pytest.raises(frames.ProtocolError, match="goes on after its final block") as raised:
        for at in range(0, len(data), step):
            decompressor.inflate(data[at : at + step], end=at + step >= len(data))
    assert raised.value.code == 1002


def test_a_message_ending_its_stream_with_a_final_block_is_read_and_the_next_starts_anew() -> None:
    decompressor = Agreement(15, True, 15, True).decompressor(None)
    final = zlib.compressobj(6, zlib.DEFLATED, -15)
    assert decompressor.inflate(final.compress(b"first") + final.flush(), end=True) == [b"first"]
    compressor = Agreement(15, True, 15, True).compressor()
    assert compressor is not None
    assert decompressor.inflate(compressor.compress(b"second"), end=True) == [b"second"]


# --- the frame layer with compression ---------------------------------------------


def compressed_frames(message: bytes, opcode: int = frames.BINARY, pieces: int = 1) -> list[bytes]:
    compressor = Agreement(15, False, 15, False).compressor()
    assert compressor is not None
    data = compressor.compress(message)
    step = max(1, -(-len(data) // pieces))
    parts = [data[at : at + step] for at in range(0, len(data), step)]
    out = []
    for n, part in enumerate(parts):
        last = n == len(parts) - 1
        first = (
            (0x80 if last else 0)
            | (opcode if n == 0 else frames.CONTINUATION)
            | (frames.RSV1 if n == 0 else 0)
        )
        out.append(
            bytes([first, len(part)]) + part
            if len(part) < 126
            else bytes([first, 126]) + len(part).to_bytes(2, "big") + part
        )
    return out


def client_parser(max_message_size: int | None = None) -> frames.Parser:
    agreement = Agreement(15, False, 15, False)
    return frames.Parser(
        client=True, max_message_size=max_message_size, decompressor=agreement.decompressor(max_message_size)
    )


def test_a_compressed_message_in_fragments_with_a_ping_between_them_arrives_whole() -> None:
    """What wsproto 1.3.2 gets wrong (it delivers the rest still compressed)."""
    parser = client_parser()
    first, second = compressed_frames("ä".encode() * 500, frames.TEXT, pieces=2)
    events = parser.receive(first) + parser.receive(b"\x89\x02hi") + parser.receive(second)
    assert isinstance(events[0], frames.Ping) and events[1] == "ä" * 500


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\xc9\x00", "compressed control frame"),  # a ping with RSV1
        (b"\x01\x01a\xc0\x00", "continuation frame with RSV1 set"),
        (b"\xa2\x00", "reserved bits set"),  # RSV2
    ],
)
def test_rsv1_only_on_a_data_messages_first_frame(data: bytes, problem: str) -> None:
    with pytest.raises(frames.ProtocolError, match=problem) as raised:
        client_parser().receive(data)
    assert raised.value.code == 1002


def test_rsv1_without_compression_agreed_is_a_protocol_error() -> None:
    parser = frames.Parser(client=True, max_message_size=None)
    with pytest.raises(frames.ProtocolError, match="no extension was agreed"):
        parser.receive(compressed_frames(b"hello")[0])


def test_compressed_text_that_is_not_utf8_is_1007_and_a_big_one_1009() -> None:
    with pytest.raises(frames.ProtocolError) as raised:
        client_parser().receive(b"".join(compressed_frames(b"\xff\xfe", frames.TEXT)))
    assert raised.value.code == 1007
    with pytest.raises(frames.ProtocolError) as raised:
        client_parser(max_message_size=1000).receive(b"".join(compressed_frames(bytes(1001), pieces=1)))
    assert raised.value.code == 1009


def test_a_compressed_message_may_take_a_little_more_than_its_limit_on_the_wire_and_no_more() -> None:
    """Random bytes do not shrink: deflate adds a few bytes. Empty blocks inflate to nothing: without
    a bound on the wire they could be sent without end."""
    parser = client_parser(max_message_size=1 << 16)
    random = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = random.compress(os.urandom(1 << 16)) + random.flush(zlib.Z_SYNC_FLUSH)
    assert len(data) > 1 << 16
    first = bytes([0x80 | frames.RSV1 | frames.BINARY, 127]) + len(data[:-4]).to_bytes(8, "big")
    assert len(parser.receive(first + data[:-4])[0]) == 1 << 16  # type: ignore[arg-type]
    empty_blocks = b"\x00\x00\x00\xff\xff" * 20_000  # 100,000 bytes that inflate to nothing
    header = bytes([0x80 | frames.RSV1 | frames.BINARY, 127]) + len(empty_blocks).to_bytes(8, "big")
    with pytest.raises(frames.ProtocolError, match="on the wire") as raised:
        parser.receive(header)
    assert raised.value.code == 1009


def test_a_plain_message_in_a_compressed_session_is_read_as_it_is() -> None:
    """RFC 7692 lets a side send any message uncompressed (``send(..., compress=False)``)."""
    assert client_parser().receive(b"\x81\x05hello") == ["hello"]


@pytest.mark.parametrize(
    ("payload", "name"),
    [
        (bytes.fromhex("f248cdc9c90700"), "7.2.3.1, a sync flush"),
        (bytes.fromhex("0005 00fa ff48 656c 6c6f 00"), "7.2.3.3, a stored block"),
        (bytes.fromhex("f348cdc9c9070000"), "7.2.3.4, a final block and a 0x00"),
        (bytes.fromhex("f24805000000ffffcac9c90700"), "7.2.3.5, two blocks"),
    ],
)
@pytest.mark.parametrize("split", [False, True])
def test_rfc_7692s_examples_of_hello_inflate(payload: bytes, name: str, split: bool) -> None:
    """Each of the RFC's compressed forms of "Hello", in one frame's piece or with its last byte apart."""
    decompressor = Agreement(15, True, 15, True).decompressor(None)
    pieces = [payload[:-1], payload[-1:]] if split else [payload]
    inflated = b"".join(
        b"".join(decompressor.inflate(p, end=i == len(pieces) - 1)) for i, p in enumerate(pieces)
    )
    assert inflated == b"Hello", name
    compressor = Agreement(15, True, 15, True).compressor()
    assert compressor is not None
    assert decompressor.inflate(compressor.compress(b"next"), end=True) == [b"next"]  # and the next message
