"""The closing handshake without I/O: close codes, how a session ended, and one state machine.

RFC 6455 section 7: either side sends a close frame, the other answers with
its own, then the TCP connection ends (the server's side first), and nothing
may follow a close frame. :class:`Closing` holds what that means for one
connection as data and decisions, with no socket, thread or clock (the
caller passes ``now``), as websockets' ``protocol.py`` and wsproto's
``ConnectionState`` do. Its states, moved by the connection's reader alone::

    OPEN ──our close frame out──▶ CLOSING ──the peer's answer in──▶ ENDING ──TCP over──▶ OVER
      └──the peer's close in──▶ (our answer out: CLOSING) ─────────▲
    any state ──lost, cut, timed out, a bug──▶ OVER

Two things come from other threads, each a plain assignment the reader
reads on its next turn: :meth:`Closing.request` (``close()``) and
:meth:`Closing.cut` (``abort()``, or a writer dropping a peer that does not read).
"""

from __future__ import annotations

import enum

# --- Close codes (RFC 6455, section 7.4.1) ----------------------------------------


class CloseCode(enum.IntEnum):
    """The registered close codes; str() and format() give the number, on every Python."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    #: Never sent on the wire: the close frame had no code.
    NO_STATUS = 1005
    #: Never sent on the wire: no close frame at all, the connection just went away.
    ABNORMAL_CLOSURE = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014

    # Python 3.10's IntEnum says "CloseCode.GOING_AWAY", and its format() follows __str__:
    # both as int's, on every Python.
    __str__ = int.__repr__
    __format__ = int.__format__  # type: ignore[assignment]


#: Close codes a peer may send: the registered ones (less 1004 to 1006 and
#: 1015, never sent on the wire) and those for applications and private use.
VALID_CLOSE_CODES = frozenset(
    {*CloseCode, *range(3000, 5000)} - {CloseCode.NO_STATUS, CloseCode.ABNORMAL_CLOSURE}
)
#: The codes after which a client may dial again: the server went away or
#: restarts, the connection was lost, or the server is overloaded. Anything
#: else (1000, a policy violation, a protocol error) is final.
RETRYABLE_CODES = frozenset(
    {
        CloseCode.GOING_AWAY,
        CloseCode.ABNORMAL_CLOSURE,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SERVICE_RESTART,
        CloseCode.TRY_AGAIN_LATER,
        CloseCode.BAD_GATEWAY,
    }
)

CLOSE_CODE_NAMES: dict[int, str] = {
    CloseCode.NORMAL_CLOSURE: "normal closure",
    CloseCode.GOING_AWAY: "going away",
    CloseCode.PROTOCOL_ERROR: "protocol error",
    CloseCode.UNSUPPORTED_DATA: "unsupported data",
    CloseCode.NO_STATUS: "no status code",
    CloseCode.ABNORMAL_CLOSURE: "connection lost",
    CloseCode.INVALID_DATA: "invalid data",
    CloseCode.POLICY_VIOLATION: "policy violation",
    CloseCode.MESSAGE_TOO_BIG: "message too big",
    CloseCode.MANDATORY_EXTENSION: "mandatory extension",
    CloseCode.INTERNAL_ERROR: "internal error",
    CloseCode.SERVICE_RESTART: "service restart",
    CloseCode.TRY_AGAIN_LATER: "try again later",
    CloseCode.BAD_GATEWAY: "bad gateway",
}

#: The longest close reason that fits a control frame (125 bytes, less the code).
MAX_REASON_BYTES = 123


def describe_close(code: int, reason: str = "") -> str:
    """Render a close code for people: ``1001 (going away) 'bye'``."""
    name = CLOSE_CODE_NAMES.get(code, "application code" if code >= 3000 else "unknown")
    text = f"{code} ({name})"
    return f"{text} {reason!r}" if reason else text


def close_reason(reason: str) -> str:
    """``reason`` cut to the 123 UTF-8 bytes a close frame holds, never mid-character."""
    data = reason.encode()
    if len(data) <= MAX_REASON_BYTES:
        return reason
    return data[:MAX_REASON_BYTES].decode(errors="ignore")


def sendable_code(code: int) -> int:
    """The code to put on the wire: 1005 and 1006 never are (RFC 6455 7.4.1); 1000 instead."""
    return CloseCode.NORMAL_CLOSURE if code in (CloseCode.NO_STATUS, CloseCode.ABNORMAL_CLOSURE) else code


class Closed(Exception):
    """The connection is over, and how it ended.

    Args:
        code: the close code the peer sent, or the one we sent if we closed
            first; 1005 for a close frame without a code, 1006 when the
            connection was lost without a close handshake.
        reason: the close reason, or what went wrong for a 1006.
        by_peer: True when the peer started the close (or vanished).
    """

    def __init__(self, code: int, reason: str = "", by_peer: bool = True) -> None:
        #: A plain int, whichever side chose it (compare it with :class:`CloseCode` members).
        self.code = int(code)
        self.reason = reason
        self.by_peer = by_peer
        super().__init__(describe_close(code, reason))

    def __reduce__(self) -> tuple[type[Closed], tuple[int, str, bool]]:
        """Pickled by its fields (to cross a process: a Celery task's result, a process pool)."""
        return type(self), (self.code, self.reason, self.by_peer)

    @property
    def clean(self) -> bool:
        """True for an orderly end: 1000 or 1001, received or sent.

        Sent counts even when the peer never answered it within the close
        timeout: this side said goodbye, and the log says the peer did not answer.
        """
        return self.code in (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY)


class State(enum.IntEnum):
    """Where a connection's reader is; the states only ever go forward."""

    #: Messages flow both ways (a close may have been asked for).
    OPEN = 0
    #: A close frame has gone out, ours or our answer: nothing may follow it; reading goes on.
    CLOSING = 1
    #: How the session ended is known: the TCP connection winds down, by :attr:`Closing.deadline`.
    ENDING = 2
    #: The reader is done and :attr:`Closing.outcome` final: its last turn releases the socket.
    OVER = 3


class Closing:
    """One connection's closing handshake: what has happened, what is due, what a write may do.

    ``close_timeout`` bounds a close from its request (or from the first
    close frame, if none was asked for) to the end of the TCP connection.
    """

    def __init__(self, close_timeout: float) -> None:
        self.close_timeout = close_timeout
        self.state = State.OPEN
        #: The close asked for, as it will go on the wire (code, reason), and by when it must be over.
        self.requested: tuple[int, str] | None = None
        self.requested_by: float | None = None
        #: The connection was cut (shut down under the reader), and why, if a writer said.
        self.is_cut = False
        self.why_cut = ""
        #: Our close frame, if it went first; the peer's, if it came first.
        self.ours: Closed | None = None
        self.peers: Closed | None = None
        #: From the first close frame on: by when the closing handshake and the TCP end must be over.
        self.deadline: float | None = None
        #: How the session ended, from ENDING on.
        self.outcome: Closed | None = None

    # --- posted by any thread -------------------------------------------------------

    def request(self, code: int, reason: str, now: float) -> None:
        """``close(code, reason)``: the first request counts; 1005 and 1006 become 1000."""
        if self.requested is None:
            self.requested_by = now + self.close_timeout  # before: a reader that sees the request uses it
            self.requested = (sendable_code(code), close_reason(reason))

    def cut(self, why: str = "") -> None:
        """The connection is being cut; the first reason given stays."""
        self.why_cut = self.why_cut or why
        self.is_cut = True

    # --- what may be written, from any thread (under the connection's wire lock) -----------

    def write_refusal(self, queued: bool) -> Closed | None:
        """What a write must raise now, or None if it may go out.

        Frames ``queued`` before a close was asked for still may, up to the close frame.
        """
        if self.state is State.OVER:
            return self.outcome
        if self.peers is not None:
            return self.peers
        if self.is_cut:
            return Closed(CloseCode.ABNORMAL_CLOSURE, self.why_cut or "the connection was cut", by_peer=False)
        if self.state is not State.OPEN:  # our close frame went out, or the session's end is known
            return self.ours or self.outcome
        if self.requested is not None and not queued:
            return Closed(*self.requested, by_peer=False)
        return None

    # --- moved by the reader ----------------------------------------------------------

    def close_due(self) -> tuple[int, str] | None:
        """The requested close, if our close frame must go out now."""
        return self.requested if self.state is State.OPEN else None

    def start_deadline(self, now: float) -> float:
        """A close frame is about to go out: the close deadline, fixed the first time."""
        if self.deadline is None:
            self.deadline = self.requested_by or now + self.close_timeout
        return self.deadline

    def frame_out(self, code: int, reason: str) -> bool:
        """Our close frame goes out now (under the wire lock): False if one went already."""
        if self.state is not State.OPEN:
            return False
        self.state = State.CLOSING
        if self.peers is None:
            self.ours = Closed(code, reason, by_peer=False)
        return True

    def received(self, code: int, reason: str) -> Closed:
        """The peer's close frame; returns how the session ended.

        If ours went first, this is its answer. If not, the peer closed
        first: :attr:`must_answer` is True until our answer (its code) is out.
        """
        if self.ours is not None:
            return self.ours
        self.peers = Closed(code, reason)
        return self.peers

    @property
    def must_answer(self) -> bool:
        return self.peers is not None and self.state is State.OPEN

    def failed(self, code: int, reason: str) -> Closed:
        """We closed with ``code`` because the peer broke a rule: how the session ended."""
        return self.ours or Closed(code, reason, by_peer=False)

    def timed_out(self) -> Closed:
        """The close deadline passed: our close stands if it went out and only its answer is missing."""
        if self.ours is None or self.why_cut:
            return Closed(CloseCode.ABNORMAL_CLOSURE, self.why_cut or "the closing handshake timed out")
        return self.ours

    def lost(self, why: str) -> Closed:
        """The TCP connection failed or ended under us: 1006, with a writer's reason first."""
        return Closed(CloseCode.ABNORMAL_CLOSURE, self.why_cut or why)

    def settle(self, outcome: Closed, now: float) -> None:
        """The close frames are settled: the TCP connection ends next, by the close deadline."""
        self.outcome = outcome
        self.deadline = self.deadline or now + self.close_timeout
        self.state = State.ENDING

    def end(self, outcome: Closed | None = None) -> None:
        """The reader is done; with ``outcome``, that is how the session ended."""
        if outcome is not None:
            self.outcome = outcome
        self.state = State.OVER
