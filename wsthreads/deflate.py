"""permessage-deflate (RFC 7692), without I/O: what the handshake agrees on, and messages through zlib.

Off unless asked for (``compression="deflate"`` on either side). Both sides
then offer or accept the extension; what they agreed is an
:class:`Agreement`, which gives each connection a :class:`Compressor` for
what it sends and a :class:`Decompressor` for what it receives:

* **The server** answers the first offer it can (:func:`answer`): every
  parameter as the RFC says, the window no larger than the setting's, and
  its own context takeover only if the setting allows it.
* **The client** offers ``permessage-deflate; client_max_window_bits`` (the
  offer of browsers and websockets), plus both ``no_context_takeover``
  parameters without context takeover (:func:`offer`); it refuses an answer
  it did not ask for, one line each (:func:`accept`).

Memory is bounded both ways. A message inflates at most to
``max_message_size`` (:class:`Decompressor` asks zlib for no more): a small
frame that would become a gigabyte closes with 1009 after at most the limit.
Without context takeover no zlib object outlives a message, so an idle
connection holds none; with it, each direction keeps one (measured in
docs/compression.md).
"""

from __future__ import annotations

import dataclasses
import re
import zlib

from .closing import CloseCode
from .frames import ProtocolError

NAME = "permessage-deflate"
#: What zlib's sync flush ends with; RFC 7692 7.2.1 drops it from the frame, and the receiver adds it back.
TAIL = b"\x00\x00\xff\xff"
#: zlib's compression level (its default).
LEVEL = 6
#: The windows RFC 7692 allows, in bits. zlib cannot compress with 8 (it needs 9):
#: a side that may use no more than 8 sends its messages uncompressed, as the RFC allows.
WINDOW_BITS = range(8, 16)
#: Window and memory level by default: websockets' server defaults, measured in
#: docs/compression.md (a 12-bit window costs little ratio and a quarter of the memory).
DEFAULT_WINDOW_BITS = 12
DEFAULT_MEMORY_LEVEL = 5
#: The most zlib inflates at a time: a message over its limit costs at most the limit and one step.
INFLATE_STEP = 1 << 16

#: One extension in a Sec-WebSocket-Extensions header: its name, and its parameters with their
#: values (None: no value), in order, as given (one may be given twice: see :func:`parameters_of`).
Extension = tuple[str, list[tuple[str, str | None]]]
Parameters = dict[str, str | None]

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PARAMETER = re.compile(rf"\s*;\s*({_TOKEN})(?:\s*=\s*({_TOKEN}|{_QUOTED}))?")
_NAME = re.compile(rf"\s*({_TOKEN})")
_SEPARATOR = re.compile(r"\s*(,|$)")


@dataclasses.dataclass(frozen=True)
class Deflate:
    """permessage-deflate as one side wants it: ``compression=Deflate(...)`` (``"deflate"``: the defaults).

    Attributes:
        window_bits: the LZ77 window, 9 to 15 bits (512 bytes to 32 KiB), of
            what this side compresses, and on a server the most it asks a
            client to use. Larger: a little better ratio, more memory.
        memory_level: zlib's memLevel, 1 to 9: memory for compressing.
        context_takeover: keep each direction's compression history from one
            message to the next. Small messages that repeat (JSON pushes)
            shrink several times more, for one compressor and one
            decompressor held per connection. Without it no zlib object
            outlives a message, and a broadcast is compressed once for every
            connection.
    """

    window_bits: int = DEFAULT_WINDOW_BITS
    memory_level: int = DEFAULT_MEMORY_LEVEL
    context_takeover: bool = True

    def __post_init__(self) -> None:
        for name, low, high in (("window_bits", 9, 15), ("memory_level", 1, 9)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be a whole number from {low} to {high}: {value!r}")
        if not isinstance(self.context_takeover, bool):
            raise TypeError(f"context_takeover is True or False, not {self.context_takeover!r}")


def compression_setting(value: object) -> Deflate | None:
    """A ``compression=`` setting as what it means: None (off), or the :class:`Deflate` to use.

    Raises:
        ValueError: ``compression is None (off), "deflate" or a Deflate(...): 'gzip'``.
    """
    if value is None or isinstance(value, Deflate):
        return value
    if value == "deflate":
        return Deflate()
    raise ValueError(f'compression is None (off), "deflate" or a Deflate(...): {value!r}'[:120])


@dataclasses.dataclass(frozen=True)
class Agreement:
    """What one connection's handshake agreed: each direction's window and context takeover.

    ``send_*`` for the messages this side compresses, ``receive_*`` for the peer's.
    """

    send_window_bits: int
    send_context_takeover: bool
    receive_window_bits: int
    receive_context_takeover: bool
    memory_level: int = DEFAULT_MEMORY_LEVEL

    def compressor(self) -> Compressor | None:
        """What compresses this side's messages; None where zlib cannot keep to the window (8 bits)."""
        return Compressor(self) if self.send_window_bits >= 9 else None

    def decompressor(self, max_message_size: int | None) -> Decompressor:
        """What inflates the peer's messages, each to at most ``max_message_size`` bytes."""
        return Decompressor(self, max_message_size)


def parse(header: str) -> list[Extension]:
    """A Sec-WebSocket-Extensions header (RFC 6455 9.1), its extensions in order; values unquoted.

    Raises:
        ValueError: the header is malformed, or lists no extension at all.
    """
    extensions: list[Extension] = []
    at, end = 0, len(header)
    while at < end:
        separator = _SEPARATOR.match(header, at)
        if separator and separator.group(1) == ",":  # an empty element of the list
            at = separator.end()
            continue
        name = _NAME.match(header, at)
        if name is None:
            raise ValueError(f"malformed extension at {header[at : at + 20]!r}")
        at = name.end()
        parameters: list[tuple[str, str | None]] = []
        while (parameter := _PARAMETER.match(header, at)) is not None:
            value = parameter.group(2)
            if value is not None and value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            parameters.append((parameter.group(1).lower(), value))
            at = parameter.end()
        separator = _SEPARATOR.match(header, at)
        if separator is None:
            raise ValueError(f"malformed extension at {header[at : at + 20]!r}")
        extensions.append((name.group(1).lower(), parameters))
        at = separator.end()
    if not extensions:
        raise ValueError("no extension in the list")
    return extensions


def parameters_of(given: list[tuple[str, str | None]]) -> Parameters:
    """An extension's parameters by name.

    Raises:
        ValueError: a parameter given twice.
    """
    parameters: Parameters = {}
    for key, value in given:
        if key in parameters:
            raise ValueError(f"parameter {key!r} given twice")
        parameters[key] = value
    return parameters


def window_bits(parameters: Parameters, name: str, *, required: bool) -> int | None:
    """A ``*_max_window_bits`` parameter's value: None if it has none (allowed unless ``required``).

    Raises:
        ValueError: a value that is not 8 to 15.
    """
    value = parameters[name]
    if value is None and not required:
        return None
    if value is None or not value.isdigit() or int(value) not in WINDOW_BITS or value.startswith("0"):
        raise ValueError(f"{name} must be 8 to 15, not {value!r}")
    return int(value)


_KNOWN = {
    "server_no_context_takeover",
    "client_no_context_takeover",
    "server_max_window_bits",
    "client_max_window_bits",
}


def check_parameters(parameters: Parameters, *, in_offer: bool) -> None:
    """Raise ValueError (one line) for a parameter RFC 7692 does not define or a value it does not allow."""
    for key, value in parameters.items():
        if key not in _KNOWN:
            raise ValueError(f"unknown {NAME} parameter {key!r}")
        if key.endswith("no_context_takeover") and value is not None:
            raise ValueError(f"{key} takes no value: {value!r}")
    if "server_max_window_bits" in parameters:
        window_bits(parameters, "server_max_window_bits", required=True)
    if "client_max_window_bits" in parameters:
        window_bits(parameters, "client_max_window_bits", required=not in_offer)


def answer(header: str, setting: Deflate) -> tuple[str, Agreement] | None:
    """The server's answer to a client's offers: its 101's extension and what it agrees; None: declined.

    The first offer of permessage-deflate that is well-formed is accepted
    (RFC 7692 5.1); a malformed header declines them all: the session goes
    on uncompressed.
    """
    try:
        offers = [given for name, given in parse(header) if name == NAME]
    except ValueError:
        return None
    for given in offers:
        try:
            parameters = parameters_of(given)
            check_parameters(parameters, in_offer=True)
        except ValueError:
            continue  # this offer only: the next may do
        return _accepted(parameters, setting)
    return None


def _accepted(offer: Parameters, setting: Deflate) -> tuple[str, Agreement]:
    """The answer to one valid offer (RFC 7692 7.1): it honours every limit the client asks for."""
    send_bits = setting.window_bits
    if "server_max_window_bits" in offer:
        send_bits = min(send_bits, window_bits(offer, "server_max_window_bits", required=True) or 15)
    agreement = Agreement(
        send_window_bits=send_bits,
        send_context_takeover=setting.context_takeover and "server_no_context_takeover" not in offer,
        # Without context takeover of our own, the client is asked to do without too: an idle
        # connection then holds no zlib object at all.
        receive_context_takeover=setting.context_takeover and "client_no_context_takeover" not in offer,
        receive_window_bits=15,  # what a client may use unless it lets us say (client_max_window_bits)
        memory_level=setting.memory_level,
    )
    parameters = [NAME]
    if not agreement.send_context_takeover:
        parameters.append("server_no_context_takeover")
    if not agreement.receive_context_takeover:
        parameters.append("client_no_context_takeover")
    parameters.append(f"server_max_window_bits={send_bits}")
    if "client_max_window_bits" in offer:
        offered = window_bits(offer, "client_max_window_bits", required=False) or 15
        receive_bits = min(offered, setting.window_bits)
        agreement = dataclasses.replace(agreement, receive_window_bits=receive_bits)
        parameters.append(f"client_max_window_bits={receive_bits}")
    return "; ".join(parameters), agreement


def offer(setting: Deflate) -> str:
    """The client's offer: browsers' and websockets' (the server may limit our window); without
    context takeover, both directions asked to do without it."""
    parameters = [NAME, "client_max_window_bits"]
    if not setting.context_takeover:
        parameters += ["server_no_context_takeover", "client_no_context_takeover"]
    return "; ".join(parameters)


def accept(header: str, setting: Deflate | None) -> Agreement | None:
    """What a server's 101 agreed to, given the client's ``setting`` (None: it offered nothing).

    Raises:
        ValueError: one line for an answer the client never offered or the RFC
            does not allow: ``extension 'x-webkit-deflate-frame' was never offered``,
            ``permessage-deflate: server_max_window_bits must be 8 to 15, not '20'``.
    """
    header = header.strip()
    if not header:
        return None
    try:
        extensions = parse(header)
    except ValueError as error:
        raise ValueError(f"malformed Sec-WebSocket-Extensions {header[:60]!r}: {error}") from None
    names = [name for name, _ in extensions]
    unasked = [name for name in names if name != NAME or setting is None]
    if unasked:
        raise ValueError(f"extension {unasked[0]!r} was never offered")
    if len(names) > 1:
        raise ValueError(f"the server agreed to {NAME} more than once")
    assert setting is not None
    try:
        parameters = parameters_of(extensions[0][1])
        check_parameters(parameters, in_offer=False)
    except ValueError as error:
        raise ValueError(f"{NAME}: {error}") from None
    if not setting.context_takeover and "server_no_context_takeover" not in parameters:
        raise ValueError(f"{NAME}: server_no_context_takeover was asked for, and the server did not agree")
    server_bits = parameters.get("server_max_window_bits") or "15"
    client_bits = parameters.get("client_max_window_bits") or "15"
    return Agreement(
        send_window_bits=min(setting.window_bits, int(client_bits)),
        send_context_takeover=setting.context_takeover and "client_no_context_takeover" not in parameters,
        receive_window_bits=int(server_bits),
        receive_context_takeover="server_no_context_takeover" not in parameters,
        memory_level=setting.memory_level,
    )


class Compressor:
    """Compresses what one side sends (RFC 7692 7.2.1).

    Without context takeover each message is compressed on its own, in any
    thread, with a zlib object that lives for that message only. With it,
    one zlib stream holds the history of every message sent, so messages
    must be compressed in the order they reach the wire (the connection
    does it under its wire lock): :attr:`in_wire_order`.
    """

    def __init__(self, agreement: Agreement) -> None:
        self._window_bits = agreement.send_window_bits
        self._memory_level = agreement.memory_level
        #: True: :meth:`compress` must be called in wire order, by one thread at a time.
        self.in_wire_order = agreement.send_context_takeover
        self._stream: zlib._Compress | None = None  # the history, with context takeover: made at first use

    def compress(self, payload: bytes) -> bytes:
        """``payload`` compressed for one message's frame (RFC 7692 7.2.1).

        Even a message that does not shrink: peers such as Autobahn's expect
        every message of a compressed session compressed (a few bytes more
        for the smallest).
        """
        stream = self._stream
        if stream is None:
            stream = zlib.compressobj(LEVEL, zlib.DEFLATED, -self._window_bits, self._memory_level)
            if self.in_wire_order:
                self._stream = stream
        data = stream.compress(payload) + stream.flush(zlib.Z_SYNC_FLUSH)
        return data[:-4] if data.endswith(TAIL) else data


class Decompressor:
    """Inflates the peer's compressed messages, each to at most ``max_message_size`` bytes.

    zlib is asked for no more than what is left of the limit, one frame's
    piece at a time: a message over it fails with 1009 having cost at most
    the limit, however small its compressed form. The zlib object lives
    from a message's first piece to its end, or with the peer's context
    takeover from its first compressed message to the connection's end.
    """

    def __init__(self, agreement: Agreement, max_message_size: int | None) -> None:
        self._window_bits = agreement.receive_window_bits
        self._keep = agreement.receive_context_takeover
        self._limit = max_message_size
        self._left = max_message_size  # what the current message may still inflate to
        self._stream: zlib._Decompress | None = None
        self._after_final = b""  # what followed a final block in this message (see _ended)

    def inflate(self, data: bytes, end: bool) -> list[bytes]:
        """One piece of a compressed message, inflated, in pieces of at most :data:`INFLATE_STEP` bytes.

        ``end`` for the message's last piece. Pieces, not one joined buffer:
        what the message holds so far is never copied on the way.

        Raises:
            ProtocolError: 1009 past the limit; 1002 for data that is not deflate.
        """
        stream = self._stream
        if stream is None:
            stream = self._stream = zlib.decompressobj(-self._window_bits)
        out: list[bytes] = []
        try:
            self._inflate(stream, data, out)
            if end and not stream.eof:  # after a final block the stream is complete without it
                self._inflate(stream, TAIL, out)
        except zlib.error as error:
            self._stream = None
            raise ProtocolError(
                CloseCode.PROTOCOL_ERROR, f"compressed message is not deflate data: {error}"
            ) from None
        if end:
            self._left = self._limit
            self._after_final = b""
            if not self._keep or stream.eof:  # a final block ends the stream: the next message starts anew
                self._stream = None
        return out

    def _ended(self, data: bytes) -> None:
        """Bytes after a final block (BFINAL) ended the message's deflate data.

        RFC 7692 7.2.3.4 has the sender add one 0x00 byte there (the start of the empty
        block the receiver's 00 00 FF FF completes); anything more is an error, which zlib
        would otherwise keep, unread, without limit.
        """
        self._after_final += data
        if self._after_final not in (b"", b"\x00"):
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "compressed message goes on after its final block")

    def _inflate(self, stream: zlib._Decompress, data: bytes, out: list[bytes]) -> None:
        if stream.eof:
            self._ended(data)
            return
        while True:
            left = self._left
            want = INFLATE_STEP if left is None else min(left + 1, INFLATE_STEP)  # one more: over the limit
            piece = stream.decompress(data, want)
            if left is not None:
                if len(piece) > left:
                    self._stream = None
                    raise ProtocolError(
                        CloseCode.MESSAGE_TOO_BIG, f"message over {self._limit} bytes once inflated"
                    )
                self._left = left - len(piece)
            if piece:
                out.append(piece)
            data = stream.unconsumed_tail
            if stream.eof:
                self._ended(stream.unused_data)
                return
            if not data and len(piece) < want:  # a full piece may leave more to come from zlib's state
                return
