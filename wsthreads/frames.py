"""The WebSocket frame layer (RFC 6455, section 5), both ways, without I/O.

:class:`Parser` turns the bytes a peer sent into what they mean: whole
messages (``str`` for text, ``bytes`` for binary) and control frames
(:class:`Ping`, :class:`Pong`, :class:`Close`), checking every rule a peer
can break on the way; a broken rule raises :class:`ProtocolError` with the
close code to answer with (1002, 1007 bad UTF-8, 1009 too big).
:func:`frame` builds a final frame to send. Nothing here reads or writes a
socket or starts a thread: the connection does (websockets' sans-I/O split).

Why our own and not wsproto's: this is the hot path of every message, and
wsproto spends most of a small message's time in per-event objects and
generators; see docs/performance.md. Masking is pure Python (a few ms per
MiB), or websockets' C ``apply_mask`` (a few hundredths of one) where it is
installed (``pip install "wsthreads[speedups]"``); ``bench/masking.py``.
A message may be compressed (RSV1, RFC 7692) only when the handshake agreed
to permessage-deflate: the parser then inflates it through the
:class:`wsthreads.deflate.Decompressor` it was given, bounded as it inflates.
"""

from __future__ import annotations

import codecs
import importlib.metadata
import os
import struct
import sysconfig
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .closing import VALID_CLOSE_CODES, CloseCode

if TYPE_CHECKING:
    from .deflate import Decompressor

#: The C masking function, if any (:func:`accelerated_masking`).
Masking = Callable[[bytes, bytes], bytes]


def accelerated_masking() -> Masking | None:
    """websockets' C ``apply_mask`` (the ``speedups`` extra), where it is there and safe to use.

    Not with ``WSTHREADS_MASKING=python`` in the environment (to measure the
    pure Python path), nor on a free-threaded CPython with websockets before
    16, whose C module would turn the GIL back on for the whole process.
    """
    if os.environ.get("WSTHREADS_MASKING") == "python":
        return None
    try:
        version = importlib.metadata.version("websockets")
    except importlib.metadata.PackageNotFoundError:
        return None
    if sysconfig.get_config_var("Py_GIL_DISABLED") and int(version.split(".")[0]) < 16:
        return None
    try:
        from websockets.speedups import apply_mask
    except ImportError:  # a build without its C extension
        return None
    return apply_mask


apply_mask = accelerated_masking()
#: One XOR table per key byte: ``bytes.translate`` with table k XORs every byte with k.
_XOR_TABLES = [bytes(byte ^ k for byte in range(256)) for k in range(256)]
#: From this size on, four strided translates beat one big-integer XOR (measured by
#: ``bench/masking.py``; the figures: docs/performance.md, "Where the constants come from").
_TRANSLATE_FROM = 80 * 1024

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: The first header byte's RSV1 bit: "this message is compressed" (RFC 7692 6).
RSV1 = 0x40
#: The most a control frame may carry (RFC 6455 5.5).
MAX_CONTROL_PAYLOAD = 125
#: Bytes a compressed message may take on the wire beyond its limit and a sixteenth.
COMPRESSED_SLACK = 1024
# A message piece this big is kept as it is; smaller ones are copied into a shared buffer.
_OWN_PIECE = 4096

_new_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class ProtocolError(Exception):
    """The peer broke a rule: close with ``code``, saying ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        #: What the same bytes completed before the broken rule (set by :meth:`Parser.receive`).
        self.events: list[Event] = []
        super().__init__(reason)


class Ping:
    """A ping: answer it with a pong carrying the same payload."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Pong:
    """A pong: the answer to a ping."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Close:
    """The peer's close frame: its code (1005 if it had none) and reason."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


#: What the parser reports: a whole message, or a control frame.
Event = str | bytes | Ping | Pong | Close


def mask(key: bytes, payload: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte masking ``key`` (RFC 6455 5.3)."""
    if apply_mask is not None:
        return apply_mask(payload, key)
    return mask_in_python(key, payload)


def mask_in_python(key: bytes, payload: bytes | memoryview) -> bytes:
    """:func:`mask` without C: one big-integer XOR, or for large payloads a table per key byte."""
    length = len(payload)
    if length < _TRANSLATE_FROM:
        repeated = (key * (length // 4 + 1))[:length]
        return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(
            length, "little"
        )
    payload = bytes(payload)  # a memoryview has no translate()
    masked = bytearray(length)
    for offset in range(4):  # every fourth byte shares a key byte
        masked[offset::4] = payload[offset::4].translate(_XOR_TABLES[key[offset]])
    return bytes(masked)


class Unmasker:
    """Unmasks one frame's payload piece by piece, as the pieces arrive."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._offset = 0  # bytes unmasked so far

    def process(self, data: bytes) -> bytes:
        start = self._offset % 4
        self._offset += len(data)
        return mask(self._key[start:] + self._key[:start] if start else self._key, data)


class _MaskingKeys:
    """Masking keys from ``os.urandom``, 1024 per system call instead of one per frame.

    Still from the strong source RFC 6455 10.3 asks for; refilled afresh in
    a forked child, so two processes never share keys.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def next(self) -> bytes:
        with self._lock:
            if self._at >= len(self._pool):
                self._pool, self._at = os.urandom(4096), 0
            key = self._pool[self._at : self._at + 4]
            self._at += 4
            return key

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._pool, self._at = b"", 0


_masking_keys = _MaskingKeys()


def frame_header(opcode: int, length: int, masked: bool, compressed: bool = False) -> bytes:
    """The header of a final frame (RFC 6455, section 5.2), without the masking key."""
    mask_bit = 0x80 if masked else 0
    first = 0x80 | opcode | (RSV1 if compressed else 0)
    if length < 126:
        return struct.pack("!BB", first, mask_bit | length)
    if length < 1 << 16:
        return struct.pack("!BBH", first, mask_bit | 126, length)
    return struct.pack("!BBQ", first, mask_bit | 127, length)


def frame(opcode: int, payload: bytes, masked: bool, compressed: bool = False) -> tuple[bytes, bytes]:
    """A final frame as its header and its payload (masked with a fresh key for a client).

    ``compressed``: the payload is a compressed message's (RSV1 set).
    """
    header = frame_header(opcode, len(payload), masked, compressed)
    if masked:
        key = _masking_keys.next()
        return header + key, mask(key, payload)
    return header, payload


def close_payload(code: int, reason: str) -> bytes:
    """A close frame's payload: the code, then the reason in UTF-8."""
    return struct.pack("!H", code) + reason.encode()


def parse_close(payload: bytes) -> Close:
    """The peer's close frame, checked: a valid code (or none), a UTF-8 reason."""
    if not payload:
        return Close(CloseCode.NO_STATUS, "")
    if len(payload) == 1:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    if code not in VALID_CLOSE_CODES:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"close frame with invalid code {code}")
    try:
        return Close(code, payload[2:].decode())
    except UnicodeDecodeError:
        raise ProtocolError(CloseCode.INVALID_DATA, "close reason is not valid UTF-8") from None


class Parser:
    """Bytes from the peer in, messages and control frames out (:meth:`receive`).

    Args:
        client: True on the client side: the server's frames must not be
            masked; on the server side every frame must be.
        max_message_size: the largest message in bytes; a frame header that
            announces more (with what the message already holds) raises 1009
            before its payload is read (a compressed message: as it
            inflates). None: no limit.
        decompressor: inflates compressed messages, when the handshake
            agreed to permessage-deflate; None: a set RSV1 bit is an error.
    """

    def __init__(
        self, *, client: bool, max_message_size: int | None, decompressor: Decompressor | None = None
    ) -> None:
        self._masked = not client
        self._limit = max_message_size
        self._decompressor = decompressor
        self._unparsed = b""  # the start of a frame header
        # The frame being read, once its header is in: None between frames.
        self._left: int | None = None
        self._opcode = 0
        self._fin = False
        self._unmasker: Unmasker | None = None
        self._control: list[bytes] = []  # a control frame's payload so far
        # The data message being assembled: its opcode (0: none), its pieces, its size in bytes.
        self._message = 0
        self._compressed = False  # the message being assembled came with RSV1: inflate it
        self._growth = 0  # what inflating added to the bytes received (see take_growth)
        self._parts: list[bytes | bytearray] = []
        self._size = 0
        self._decoder: codecs.IncrementalDecoder | None = None  # checks text piece by piece
        self._closed = False  # a close frame came: nothing after it is read

    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes; every message and control frame they complete, in order.

        Raises ProtocolError at the first rule broken, with the events
        completed before it in its ``events``; the parser is not to be used
        after that. After a close frame, nothing more is parsed (RFC 6455
        5.5.1: it is the last frame).
        """
        events: list[Event] = []
        try:
            self._parse(data, events)
        except ProtocolError as error:
            error.events = events
            raise
        return events

    def take_growth(self) -> int:
        """Bytes inflating added to those received since the last call (0 without compression).

        For a limit on bytes a second: a compressed message costs what it inflates to.
        """
        growth, self._growth = self._growth, 0
        return growth

    def _parse(self, data: bytes, events: list[Event]) -> None:
        if self._closed:
            return
        if self._unparsed:
            data, self._unparsed = self._unparsed + data, b""
        at, end = 0, len(data)
        while at < end or self._left == 0:
            if self._left is None:
                used = self._parse_header(data, at, end)
                if not used:
                    self._unparsed = data[at:]
                    return
                at += used
            left = self._left
            assert left is not None
            take = min(left, end - at)
            chunk = data if take == end and at == 0 else data[at : at + take]
            at += take
            self._left = left = left - take
            if self._unmasker is not None and take:
                chunk = self._unmasker.process(chunk)
            event = self._payload(chunk, finished=left == 0)
            if event is not None:
                events.append(event)
                if isinstance(event, Close):
                    self._closed = True
                    return

    def _parse_header(self, data: bytes, at: int, end: int) -> int:
        """Read a frame header at ``at`` if it is all there; its length, or 0 to wait for more."""
        if end - at < 2:
            return 0
        first, second = data[at], data[at + 1]
        length = second & 0x7F
        size = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if second & 0x80 else 0)
        if end - at < size:
            return 0
        if first & 0x70 and (first & 0x70 != RSV1 or self._decompressor is None):
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "reserved bits set: no extension was agreed")
        if bool(second & 0x80) is not self._masked:
            side = "client sent an unmasked" if self._masked else "server sent a masked"
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"the {side} frame")
        opcode, fin = first & 0x0F, bool(first & 0x80)
        offset = at + 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, offset)
            offset += 2
            if length < 126:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "frame length not in its shortest form")
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, offset)
            offset += 8
            if length >> 63:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "frame length with its highest bit set")
            if length < 1 << 16:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "frame length not in its shortest form")
        if opcode & 0x08:
            self._check_control(opcode, fin, length, first & RSV1)
        else:
            self._check_data(opcode, length, first & RSV1)
        self._opcode, self._fin, self._left = opcode, fin, length
        self._unmasker = Unmasker(data[offset : offset + 4]) if self._masked else None
        return size

    @staticmethod
    def _check_control(opcode: int, fin: bool, length: int, rsv1: int) -> None:
        if opcode not in (CLOSE, PING, PONG):
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if rsv1:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "compressed control frame (RSV1 set)")
        if not fin:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
        if length > MAX_CONTROL_PAYLOAD:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"control frame of {length} bytes (at most 125)")

    def _check_data(self, opcode: int, length: int, rsv1: int) -> None:
        if opcode == CONTINUATION:
            if not self._message:
                raise ProtocolError(
                    CloseCode.PROTOCOL_ERROR, "continuation frame without a message to continue"
                )
            if rsv1:  # RFC 7692 6.1: only a message's first frame says it is compressed
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "continuation frame with RSV1 set")
        elif opcode in (TEXT, BINARY):
            if self._message:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "new message before the last one was finished")
            self._message = opcode
            self._compressed = bool(rsv1)
        else:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        limit = self._limit
        if limit is not None and self._size + length > limit:
            # A compressed message's limit is on what it inflates to (the decompressor's); on the
            # wire it may take a little more (deflate adds 5 bytes per 64 KiB it cannot shrink),
            # and no more: bytes that inflate to nothing are not read without end.
            if not self._compressed:
                raise ProtocolError(
                    CloseCode.MESSAGE_TOO_BIG, f"message over {limit} bytes"
                )  # the header alone tells
            if self._size + length > limit + (limit >> 4) + COMPRESSED_SLACK:
                raise ProtocolError(
                    CloseCode.MESSAGE_TOO_BIG, f"compressed message over {limit} bytes on the wire"
                )
        self._size += length

    def _payload(self, chunk: bytes, finished: bool) -> Event | None:
        """A piece of the current frame's payload; the event it completes, if any."""
        if self._opcode & 0x08:
            self._control.append(chunk)
            if not finished:
                return None
            payload, self._control = b"".join(self._control), []
            self._left = None
            if self._opcode == PING:
                return Ping(payload)
            if self._opcode == PONG:
                return Pong(payload)
            return parse_close(payload)
        whole = finished and self._fin
        if finished:
            self._left = None
        if self._compressed:
            assert self._decompressor is not None
            pieces = self._decompressor.inflate(chunk, end=whole)
            self._growth += sum(len(piece) for piece in pieces) - len(chunk)
        else:
            pieces = [chunk]
        if whole and not self._parts and len(pieces) == 1:
            data = pieces[0]  # the common case: a message in one piece, not copied
        else:
            last = len(pieces) - 1
            for n, piece in enumerate(pieces):
                if self._message == TEXT:
                    self._check_text(piece, whole and n == last)
                self._keep(piece)
            if not whole:
                return None
            data = b"".join(self._parts)
            self._parts = []
        opcode, self._size, self._message, self._decoder = self._message, 0, 0, None
        self._compressed = False
        if opcode == BINARY:
            return data
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise ProtocolError(CloseCode.INVALID_DATA, "text message is not valid UTF-8") from None

    def _keep(self, piece: bytes) -> None:
        """Add a piece to the message being assembled, copied once at its end.

        Small pieces share one buffer: a message costs about its bytes
        however many frames the peer cuts it into, empty ones included.
        """
        parts = self._parts
        if len(piece) >= _OWN_PIECE:
            parts.append(piece)
        elif parts and isinstance(parts[-1], bytearray):
            parts[-1] += piece
        elif piece:
            parts.append(bytearray(piece))

    def _check_text(self, piece: bytes, last: bool) -> None:
        """Check a text message's UTF-8 piece by piece, so invalid text fails at once (1007)."""
        if self._decoder is None:
            self._decoder = _new_utf8_decoder()
        try:
            self._decoder.decode(piece, last)
        except UnicodeDecodeError:
            raise ProtocolError(CloseCode.INVALID_DATA, "text message is not valid UTF-8") from None
