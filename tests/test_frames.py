"""The frame layer without sockets: every rule a peer can break, and bytes split anywhere.

The Autobahn cases (tests/test_autobahn.py) check the same parser over real
connections; these name each rule and its close code directly.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import warnings

import pytest

from wsthreads import frames
from wsthreads.frames import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, Parser, ProtocolError


def raw_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """A frame as a peer may send it, rules broken or not (masked as a client's)."""
    first = (0x80 if fin else 0) | rsv | opcode
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + frames.mask(key, payload)


def events_of(data: bytes, *, client: bool = False, limit: int | None = None, step: int = 0) -> list[object]:
    """What a parser reports for ``data``, fed whole or ``step`` bytes at a time."""
    parser = Parser(client=client, max_message_size=limit)
    pieces = [data] if not step else [data[i : i + step] for i in range(0, len(data), step)]
    events: list[object] = []
    for piece in pieces:
        events += parser.receive(piece)
    return [(type(e).__name__, e.payload) if isinstance(e, (frames.Ping, frames.Pong)) else e for e in events]


A_SESSION = (
    raw_frame(TEXT, "héllo".encode())
    + raw_frame(BINARY, b"\x00\x01")
    + raw_frame(TEXT, b"", fin=True)
    + raw_frame(TEXT, b"frag", fin=False)
    + raw_frame(PING, b"in between")
    + raw_frame(CONTINUATION, "mé".encode(), fin=False)
    + raw_frame(CONTINUATION, b"nted")
    + raw_frame(BINARY, os.urandom(70000))
    + raw_frame(PONG, b"")
)


@pytest.mark.parametrize("step", [0, 1, 2, 3, 7, 125, 4096, 65536])
def test_the_same_messages_however_the_bytes_are_split(step: int) -> None:
    expected = events_of(A_SESSION)
    assert events_of(A_SESSION, step=step) == expected
    assert expected[:4] == ["héllo", b"\x00\x01", "", ("Ping", b"in between")]
    assert expected[4] == "frag" + "mé" + "nted"
    assert isinstance(expected[5], bytes) and len(expected[5]) == 70000
    assert expected[6] == ("Pong", b"")


def test_a_utf8_character_split_across_fragments_is_whole() -> None:
    data = "€".encode()
    frames_ = raw_frame(TEXT, data[:1], fin=False) + raw_frame(CONTINUATION, data[1:])
    assert events_of(frames_, step=1) == ["€"]


def test_client_side_reads_unmasked_frames() -> None:
    assert events_of(raw_frame(TEXT, b"hi", masked=False), client=True) == ["hi"]


def test_close_frames() -> None:
    close = events_of(raw_frame(CLOSE, struct.pack("!H", 1001) + "bye ✓".encode()))[0]
    assert isinstance(close, frames.Close) and (close.code, close.reason) == (1001, "bye ✓")
    empty = events_of(raw_frame(CLOSE, b""))[0]
    assert isinstance(empty, frames.Close) and (empty.code, empty.reason) == (1005, "")


BROKEN = {
    "reserved bit": (raw_frame(TEXT, b"x", rsv=0x40), 1002, "reserved bits"),
    "unmasked client frame": (raw_frame(TEXT, b"x", masked=False), 1002, "unmasked"),
    "unknown data opcode": (raw_frame(0x3, b""), 1002, "unknown opcode 0x3"),
    "unknown control opcode": (raw_frame(0xB, b""), 1002, "unknown opcode 0xb"),
    "fragmented ping": (raw_frame(PING, b"", fin=False), 1002, "fragmented control"),
    "ping of 126 bytes": (raw_frame(PING, b"x" * 126), 1002, "126 bytes"),
    "continuation first": (raw_frame(CONTINUATION, b"x"), 1002, "without a message"),
    "new message mid-message": (
        raw_frame(TEXT, b"a", fin=False) + raw_frame(TEXT, b"b"),
        1002,
        "before the last one was finished",
    ),
    "invalid UTF-8": (raw_frame(TEXT, b"\xff"), 1007, "not valid UTF-8"),
    "invalid UTF-8 in a first fragment": (raw_frame(TEXT, b"ok\xc0\xaf", fin=False), 1007, "UTF-8"),
    "UTF-8 broken across fragments": (
        raw_frame(TEXT, b"ok \xe2\x82", fin=False) + raw_frame(CONTINUATION, b"\x28"),
        1007,
        "UTF-8",
    ),
    "close with 1 byte": (raw_frame(CLOSE, b"\x03"), 1002, "1-byte"),
    "close code 1005": (raw_frame(CLOSE, struct.pack("!H", 1005)), 1002, "invalid code 1005"),
    "close code 1006": (raw_frame(CLOSE, struct.pack("!H", 1006)), 1002, "invalid code 1006"),
    "close code 999": (raw_frame(CLOSE, struct.pack("!H", 999)), 1002, "invalid code 999"),
    "close code 2999": (raw_frame(CLOSE, struct.pack("!H", 2999)), 1002, "invalid code 2999"),
    "close reason not UTF-8": (raw_frame(CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007, "reason"),
    "length not shortest (16-bit)": (b"\x81\xfe\x00\x05" + os.urandom(4) + b"x" * 5, 1002, "shortest"),
    "length not shortest (64-bit)": (b"\x81\xff" + struct.pack("!Q", 5) + os.urandom(4), 1002, "shortest"),
    "length with the top bit": (
        b"\x82\xff" + struct.pack("!Q", 1 << 63) + os.urandom(4),
        1002,
        "highest bit",
    ),
}


@pytest.mark.parametrize("data, code, reason", BROKEN.values(), ids=BROKEN.keys())
def test_each_broken_rule_has_its_close_code(data: bytes, code: int, reason: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        events_of(data, step=1)  # a byte at a time: the check may not depend on how bytes arrive
    assert raised.value.code == code and reason in raised.value.reason


def test_a_masked_server_frame_is_refused_by_the_client() -> None:
    with pytest.raises(ProtocolError, match="server sent a masked frame"):
        events_of(raw_frame(TEXT, b"x"), client=True)


@pytest.mark.parametrize(
    "data, code, reason",
    [
        (raw_frame(TEXT, b"\xff\xfe", masked=False), 1007, "not valid UTF-8"),
        (raw_frame(0x3, b"", masked=False), 1002, "unknown opcode 0x3"),
    ],
    ids=["invalid UTF-8", "unknown opcode"],
)
def test_the_client_parser_keeps_the_same_rules(data: bytes, code: int, reason: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        events_of(data, client=True, step=1)
    assert raised.value.code == code and reason in raised.value.reason


def test_registered_and_application_codes_are_accepted() -> None:
    for code in (1000, 1003, 1007, 1011, 1014, 3000, 4999):
        close = events_of(raw_frame(CLOSE, struct.pack("!H", code)))[0]
        assert isinstance(close, frames.Close) and close.code == code


def test_too_big_is_refused_on_the_header_alone() -> None:
    header_only = raw_frame(BINARY, b"x" * 101)[:8]  # header and key: not one payload byte
    with pytest.raises(ProtocolError, match="message over 100 bytes") as raised:
        events_of(header_only, limit=100)
    assert raised.value.code == 1009
    fragments = raw_frame(BINARY, b"x" * 60, fin=False) + raw_frame(CONTINUATION, b"x" * 41)[:8]
    with pytest.raises(ProtocolError, match="message over 100 bytes"):
        events_of(fragments, limit=100)
    assert events_of(raw_frame(TEXT, b"x" * 100), limit=100) == ["x" * 100]
    huge = b"\x82\xff" + struct.pack("!Q", 1 << 62) + os.urandom(4)  # a header announcing 2**62 bytes
    with pytest.raises(ProtocolError, match="message over 1048576 bytes"):
        events_of(huge, limit=1 << 20)


def test_the_limit_counts_each_message_afresh() -> None:
    twice = raw_frame(BINARY, b"x" * 80) * 2
    assert events_of(twice, limit=100) == [b"x" * 80] * 2


def test_pure_python_masking_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without websockets' C function: the same bytes, also when unmasked piece by piece."""
    key, data = os.urandom(4), os.urandom(1001)
    fast = frames.mask(key, data)
    monkeypatch.setattr(frames, "apply_mask", None)
    assert frames.mask(key, data) == fast
    unmasker = frames.Unmasker(key)
    assert b"".join(unmasker.process(data[i : i + 7]) for i in range(0, len(data), 7)) == fast


def test_frames_we_build_parse_back() -> None:
    for payload in (b"", b"x" * 125, b"x" * 126, b"x" * 65535, b"x" * 65536):
        header, body = frames.frame(BINARY, payload, masked=True)
        assert events_of(header + body) == [payload]
        header, body = frames.frame(BINARY, payload, masked=False)
        assert events_of(header + body, client=True) == [payload]


def test_masking_keys_differ_and_are_refilled_in_a_forked_child() -> None:
    keys = [frames.frame(BINARY, b"x", masked=True)[0][2:6] for _ in range(3000)]
    assert len(set(keys)) > 2990  # 4 random bytes each: a repeat in 3000 is rare, many are impossible
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Under pytest-xdist the process has threads (3.12+ warns): the child only writes 4 bytes and exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: its next key must not be the parent's next one
        os.write(write, frames._masking_keys.next())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 4) != frames._masking_keys.next()


def test_what_came_before_a_broken_rule_is_reported_with_it() -> None:
    """A message and a bad frame in one read: the message still counts, then the error."""
    with pytest.raises(ProtocolError) as raised:
        Parser(client=False, max_message_size=None).receive(
            raw_frame(TEXT, b"hello") + raw_frame(PING, b"p") + raw_frame(0x3, b"")
        )
    assert raised.value.code == 1002
    assert [e if isinstance(e, str) else type(e).__name__ for e in raised.value.events] == ["hello", "Ping"]


def test_nothing_after_a_close_frame_is_parsed() -> None:
    """The close frame is the peer's last (RFC 6455 5.5.1): junk behind it breaks no rule."""
    parser = Parser(client=False, max_message_size=None)
    events = parser.receive(raw_frame(CLOSE, struct.pack("!H", 1000)) + raw_frame(0x3, b"") + b"\xff" * 20)
    assert [(e.code, e.reason) for e in events if isinstance(e, frames.Close)] == [(1000, "")]
    assert len(events) == 1 and parser.receive(raw_frame(TEXT, b"late")) == []


@pytest.mark.parametrize("piece", [b"", b"x"])
@pytest.mark.slow
def test_a_message_cut_into_tiny_frames_costs_its_bytes_not_its_frames(piece: bytes) -> None:
    """50,000 empty or 1-byte continuations hold about the message's own bytes, not 40 per frame."""
    import tracemalloc

    parser = Parser(client=False, max_message_size=1 << 20)
    tiny = raw_frame(CONTINUATION, piece, fin=False) * 10_000
    in_parser = [tracemalloc.Filter(True, frames.__file__)]  # not what other threads allocate meanwhile
    tracemalloc.start()
    try:
        assert parser.receive(raw_frame(BINARY, b"start", fin=False)) == []
        before = tracemalloc.take_snapshot().filter_traces(in_parser)
        for _ in range(5):
            assert parser.receive(tiny) == []
        after = tracemalloc.take_snapshot().filter_traces(in_parser)
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    held = 50_000 * len(piece)
    assert grown < held * 1.25 + 16 * 1024, f"the parser grew by {grown} bytes to hold {held}"
    assert parser.receive(raw_frame(CONTINUATION, b" end")) == [b"start" + piece * 50_000 + b" end"]


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 4096, 80 * 1024 - 1, 80 * 1024, 80 * 1024 + 3, 1 << 20])
def test_masking_in_pure_python_is_the_same_xor(size: int) -> None:
    """Both pure Python ways (below and above the switch) give what RFC 6455 5.3 says."""
    key, payload = os.urandom(4), os.urandom(size)
    expected = bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
    assert frames.mask_in_python(key, payload) == expected
    assert frames.mask_in_python(key, memoryview(payload)) == expected  # as the C function takes it
    assert frames.mask(key, payload) == expected  # C where the speedups extra is installed
    unmasker = frames.Unmasker(key)
    pieces = [payload[i : i + 1000] for i in range(0, size, 1000)]
    assert b"".join(unmasker.process(piece) for piece in pieces) == expected


def test_wsthreads_masking_python_turns_the_c_function_off() -> None:
    code = "from wsthreads import frames; print(frames.apply_mask)"
    pure = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "WSTHREADS_MASKING": "python"},
        capture_output=True,
        text=True,
    )
    assert pure.stdout == "None\n", pure.stderr
