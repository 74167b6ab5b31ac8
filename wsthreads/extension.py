"""Extensions: code an app runs with every session, beside its handler (pub/sub is one).

An extension plugs into three moments, as websockets' ``process_request`` and
``process_response`` do into its handshake:

* :meth:`Extension.open`, in the request's thread once the client is
  authenticated and before the 101 goes out (``conn.request``, ``conn.user``
  are known): it answers with an :class:`Opening`: headers to add to the
  101, a first step for the session (in the session's thread, before the
  handler), a step for its end (however it ends), or a close code and
  reason to close it with at once instead of running the handler;
* :meth:`Extension.start` and :meth:`Extension.stop`, with the app's life:
  when it is made (and reopened after a shutdown), and as its shutdown
  begins (no new session opens; those open are closing, and their ends
  still run). If one extension cannot start, those started before it are
  stopped, and the app is not made (or not reopened).

An extension may not send in :meth:`~Extension.open`: the 101 has not gone out
(``conn.send`` raises RuntimeError there); its first step may.

``create_app(extensions=[...])`` takes them; :class:`wsthreads.pubsub.PubSub`
is the first (publish and subscribe), and the app itself knows nothing of
what any of them does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .closing import VALID_CLOSE_CODES
from .handshake import check_header

if TYPE_CHECKING:
    from .app import WebSocketApp
    from .connection import Connection

#: Headers an extension may not put on the 101: the handshake's own, and what no 1xx may carry.
HANDSHAKE_HEADERS = {
    **dict.fromkeys(
        (
            "upgrade",
            "connection",
            "sec-websocket-accept",
            "sec-websocket-protocol",
            "sec-websocket-extensions",
            "sec-websocket-key",
            "sec-websocket-version",
        ),
        "the WebSocket handshake itself",
    ),
    **dict.fromkeys(("content-length", "transfer-encoding"), "nobody: a 101 has no body (RFC 9110)"),
}


@dataclasses.dataclass(frozen=True)
class Opening:
    """What an extension asks of one session as it opens (every field optional).

    Attributes:
        headers: ``(name, value)`` pairs added to the 101; ValueError (one
            line) for a name that is no token, a value that is not printable
            ASCII, or a header the handshake sets itself.
        first: runs in the session's thread before the handler, under the
            handler's rules (an exception closes with 1011).
        end: runs once the session is over, however it ended (even if it
            never ran: another extension closed it at once).
        closing: ``(code, reason)``: close the session with these at once;
            the handler does not run. ValueError for a code no peer may send.
    """

    headers: tuple[tuple[str, str], ...] = ()
    first: Callable[[], None] | None = None
    end: Callable[[], None] | None = None
    closing: tuple[int, str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", header_pairs(self.headers))
        for step in (self.first, self.end):
            if step is not None and not callable(step):
                raise TypeError(f"first and end are functions to call (or None), not {step!r}")
        if self.closing is not None:
            object.__setattr__(self, "closing", close_pair(self.closing))


def header_pairs(headers: object) -> tuple[tuple[str, str], ...]:
    """``headers`` as checked ``(name, value)`` pairs; TypeError or ValueError, one line, if they are not."""
    if isinstance(headers, (str, bytes, dict)) or not isinstance(headers, Iterable):
        raise TypeError(f"headers are (name, value) pairs, e.g. [('X-Room', '7')], not {headers!r}")
    pairs = tuple(headers)
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(part, str) for part in pair)):
            raise TypeError(f"a header is a (name, value) pair of strings, not {pair!r}")
        check_header(*pair, HANDSHAKE_HEADERS)
    return pairs


def close_pair(closing: object) -> tuple[int, str]:
    """``closing`` as a checked ``(code, reason)``; TypeError or ValueError, one line, if it is not."""
    if not (isinstance(closing, tuple) and len(closing) == 2 and isinstance(closing[1], str)):
        raise TypeError(f"closing is a (code, reason) pair, e.g. (1008, 'not allowed'), not {closing!r}")
    code, reason = closing
    if isinstance(code, bool) or not isinstance(code, int) or code not in VALID_CLOSE_CODES:
        raise ValueError(f"not a close code a peer may be sent: {code!r}")
    return code, reason


@runtime_checkable
class Extension(Protocol):
    """Code an app runs with every session; see the module's docstring."""

    def start(self, app: WebSocketApp) -> None:
        """The app is made, or reopened after a shutdown: be ready for its sessions."""

    def open(self, conn: Connection) -> Opening:
        """A session is about to open (before the 101): what it needs of it."""

    def stop(self) -> None:
        """The app's shutdown has begun: no session opens any more; the open ones are closing."""


def check_extensions(extensions: object) -> tuple[Extension, ...]:
    """``extensions`` as a tuple, each one an :class:`Extension`; else TypeError, one line."""
    if isinstance(extensions, Extension):
        raise TypeError(f"extensions is a sequence of extensions, e.g. [{extensions!r}]")
    if not isinstance(extensions, Iterable) or isinstance(extensions, str):
        raise TypeError(f"extensions is a sequence of extensions, not {extensions!r}")
    found = tuple(extensions)
    for extension in found:
        if isinstance(extension, type):
            raise TypeError(f"extensions are objects, not classes: {extension.__name__}(...), not the class")
        if not isinstance(extension, Extension):
            raise TypeError(f"not an extension (it needs start, open and stop): {extension!r}")
        if sum(other is extension for other in found) > 1:
            raise ValueError(f"an extension is given twice: {extension!r}")
    return found
