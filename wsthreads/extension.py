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
  when it is made (and reopened after a shutdown), and once its shutdown is
  over.

``create_app(extensions=[...])`` takes them; :class:`wsthreads.pubsub.PubSub`
is the first (topics, a broker, resuming after a reconnect), and the app
itself knows nothing of what any of them does.
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

#: Headers of the 101 that the handshake sets itself: an extension may not.
HANDSHAKE_HEADERS = dict.fromkeys(
    (
        "upgrade",
        "connection",
        "sec-websocket-accept",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
    ),
    "the WebSocket handshake itself",
)


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
        object.__setattr__(self, "headers", tuple(self.headers))
        for name, value in self.headers:
            check_header(name, value, HANDSHAKE_HEADERS)
        if self.closing is not None and self.closing[0] not in VALID_CLOSE_CODES:
            raise ValueError(f"not a close code a peer may be sent: {self.closing[0]!r}")


@runtime_checkable
class Extension(Protocol):
    """Code an app runs with every session; see the module's docstring."""

    def start(self, app: WebSocketApp) -> None:
        """The app is made, or reopened after a shutdown: be ready for its sessions."""

    def open(self, conn: Connection) -> Opening:
        """A session is about to open (before the 101): what it needs of it."""

    def stop(self) -> None:
        """The app's shutdown is over: every session has ended, or was cut."""


def check_extensions(extensions: object) -> tuple[Extension, ...]:
    """``extensions`` as a tuple, each one an :class:`Extension`; else TypeError, one line."""
    if isinstance(extensions, Extension):
        raise TypeError(f"extensions is a sequence of extensions, e.g. [{extensions!r}]")
    if not isinstance(extensions, Iterable) or isinstance(extensions, str):
        raise TypeError(f"extensions is a sequence of extensions, not {extensions!r}")
    found = tuple(extensions)
    for extension in found:
        if not isinstance(extension, Extension):
            raise TypeError(f"not an extension (it needs start, open and stop): {extension!r}")
    return found
