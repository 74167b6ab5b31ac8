"""The HTTP request a session began with, and how an authentication hook refuses one.

The server builds a :class:`Request` from the WSGI environ before the upgrade
and hands it to your ``authenticate`` hook; what the hook returns becomes the
connection's ``user``. Both stay on the connection (``conn.request``,
``conn.user``) for the session's code.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from werkzeug.datastructures import EnvironHeaders, MultiDict
from werkzeug.http import parse_cookie

from .handshake import check_header

#: ``authenticate(request)``: who the client is (anything but None), or None to refuse with 401.
Authenticate = Callable[["Request"], Any]


@dataclasses.dataclass(frozen=True)
class Request:
    """The opening handshake's HTTP request, as the session's code sees it.

    Attributes:
        path: the path, e.g. ``/ws`` (without the query).
        query: the query's parameters; ``query.get("room")`` is the first
            value, ``query.getlist("room")`` every one.
        headers: the request's headers, names case-insensitive.
        cookies: the cookies the client sent, by name.
        remote_addr: the client's address: the connection's, or behind a
            trusted proxy (``trusted_proxies``) the one the proxy forwarded
            in ``X-Forwarded-For``; ``""`` over a Unix socket from no
            trusted proxy.
        subprotocols: the subprotocols the client offered, in its order of preference.
        environ: the WSGI environ itself, e.g. for the host app's session
            (``with flask_app.request_context(request.environ): ...``).
    """

    path: str
    query: MultiDict[str, str]
    headers: Mapping[str, str]
    cookies: Mapping[str, str]
    remote_addr: str
    subprotocols: tuple[str, ...]
    environ: dict[str, Any] = dataclasses.field(repr=False)

    @classmethod
    def from_environ(cls, environ: dict[str, Any], proxies: TrustedProxies | None = None) -> Request:
        """The request of a WSGI environ (Werkzeug's or gunicorn's); ``remote_addr`` as ``proxies`` say."""
        offered = environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "")
        return cls(
            path=wsgi_text(environ.get("PATH_INFO", "")),
            query=url_query(wsgi_text(environ.get("QUERY_STRING", ""))),
            headers=EnvironHeaders(environ),  # type: ignore[arg-type]
            cookies=parse_cookie(valid_utf8(environ.get("HTTP_COOKIE", ""))),
            remote_addr=(proxies or NO_PROXIES).client_address(environ),
            subprotocols=tuple(p.strip() for p in offered.split(",") if p.strip()),
            environ=environ,
        )


#: The ``trusted_proxies`` entry for whatever connects over a Unix socket (it has no address):
#: nginx in front, with the socket's file permissions as the check of who may.
UNIX_SOCKET = "unix"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclasses.dataclass(frozen=True)
class TrustedProxies:
    """The proxies whose ``X-Forwarded-For`` (or, without one, ``Forwarded``) tells the client's address.

    A header from anyone else is the client's own word, and is ignored.
    ``X-Forwarded-For`` wins when both come: a proxy that sets only
    ``Forwarded`` must remove a client's ``X-Forwarded-For``.
    Behind several proxies the client is the rightmost address no trusted
    proxy holds: each proxy appends the address it saw, and a client can
    put anything on the left.
    """

    networks: tuple[Network, ...] = ()
    unix: bool = False

    @classmethod
    def parse(cls, entries: Iterable[str]) -> TrustedProxies:
        """From ``("127.0.0.1", "10.0.0.0/8", "unix")``; ValueError naming an entry that is none of these."""
        if isinstance(entries, str):
            raise TypeError(f"trusted_proxies is a sequence of addresses, e.g. ({entries!r},)")
        networks, unix = [], False
        for entry in entries:
            if isinstance(entry, str) and entry.strip() == UNIX_SOCKET:
                unix = True
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except (ValueError, AttributeError):
                raise ValueError(
                    f"not an address, a network or 'unix' for trusted_proxies: {entry!r}"
                    " (e.g. 127.0.0.1, 10.0.0.0/8, unix)"
                ) from None
        return cls(tuple(networks), unix)

    def trusts(self, address: str) -> bool:
        """Whether ``address`` (``""``: a Unix socket's peer) is a trusted proxy."""
        if not self.networks:  # no address to parse: the usual case, without proxies
            return self.unix and address == ""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return self.unix and address == ""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1, as a server listening on :: sees 127.0.0.1
        return any(ip in network for network in self.networks)

    def client_address(self, environ: dict[str, Any]) -> str:
        """The client's address: the connection's, or the one trusted proxies forwarded."""
        address = normalized(str(environ.get("REMOTE_ADDR") or ""))
        if not self.trusts(address):
            return address
        header = str(environ.get("HTTP_X_FORWARDED_FOR", ""))
        forwarded = [normalized(node_address(hop.strip())) for hop in header.split(",") if hop.strip()]
        if not forwarded:
            forwarded = [normalized(hop) for hop in forwarded_for(str(environ.get("HTTP_FORWARDED", "")))]
        for hop in reversed(forwarded):
            if not self.trusts(hop):
                return hop
        return forwarded[0] if forwarded else address


def forwarded_for(header: str) -> list[str]:
    """The ``for=`` nodes of a ``Forwarded`` header (RFC 7239), in order, as addresses.

    ``for="[2001:db8::1]:4711"`` gives ``2001:db8::1``, ``for=192.0.2.43:47011``
    gives ``192.0.2.43``; ``unknown`` and ``_hidden`` stay as they are.
    """
    hops = []
    for element in header.split(","):
        for pair in element.split(";"):
            name, _, value = pair.partition("=")
            if name.strip().lower() == "for" and value.strip():
                hops.append(node_address(value.strip().strip('"')))
    return hops


@functools.lru_cache(maxsize=4096)  # each request asks two or three times, and clients come back
def normalized(address: str) -> str:
    """An IP address in one spelling (``2001:DB8::1`` as ``2001:db8::1``, ``::ffff:10.0.0.1`` as
    ``10.0.0.1``), so that a limit per address cannot be dodged by spelling it otherwise; else as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def node_address(node: str) -> str:
    """A Forwarded node (or an X-Forwarded-For entry) without brackets or port."""
    if node.startswith("["):
        return node[1:].split("]", 1)[0]
    host, colon, port = node.partition(":")
    return host if colon and port.isdigit() and ":" not in port else node


#: Nobody's ``X-Forwarded-For`` is believed.
NO_PROXIES = TrustedProxies()


def wsgi_text(value: str) -> str:
    """A WSGI environ string as the text the client meant.

    WSGI hands the request's bytes over decoded as Latin-1 (PEP 3333), so
    ``/nöws`` sent as UTF-8, raw or percent-encoded, would read ``/nÃ¶ws``.
    Bytes that are not UTF-8 become U+FFFD.
    """
    try:
        return value.encode("latin-1").decode("utf-8", errors="replace")
    except UnicodeEncodeError:  # not a WSGI string: a server that decoded already
        return value


def valid_utf8(value: str) -> str:
    """A WSGI string whose bytes are valid UTF-8: a bad byte becomes U+FFFD's (Werkzeug's parsers
    would raise UnicodeDecodeError, and the request end in a traceback)."""
    return wsgi_text(value).encode().decode("latin-1")


def url_query(text: str) -> MultiDict[str, str]:
    """The parameters of a query string, every value kept, in order."""
    return MultiDict(parse_qsl(text, keep_blank_values=True))


#: Headers of a refusal that the server sets itself.
OWN_HEADERS = dict.fromkeys(
    ("content-length", "content-type", "transfer-encoding", "connection", "date", "server"),
    "the server, in a refusal",
)


def checked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers``, each checked (:func:`~wsthreads.handshake.check_header`), no name twice in any case.

    Raises ValueError, one line, if one is not.
    """
    seen: set[str] = set()
    for name, value in headers.items():
        check_header(name, value, OWN_HEADERS)
        if name.lower() in seen:
            raise ValueError(f"header {name!r} is given twice")
        seen.add(name.lower())
    return dict(headers)


class Reject(Exception):
    """Raise it in an ``authenticate`` hook to refuse the request with ``status`` and one line.

    ``raise Reject(401, "missing bearer token")`` answers ``401 Unauthorized``
    with that line as the body (and ``WWW-Authenticate: Bearer``, which a 401
    must carry, unless ``headers`` has one); 403 for "known, but not allowed".

    Raises:
        ValueError: a status that is not an int in 400-599, or a header that
            could not be sent as given (a name that is not a token, a value
            with CR, LF, NUL or non-ASCII, or Content-Length and the like,
            which the server sets itself).
    """

    def __init__(self, status: int, reason: str, headers: Mapping[str, str] | None = None) -> None:
        check_status(status)
        super().__init__(reason)
        self.status = status
        self.reason = reason.strip().splitlines()[0] if reason.strip() else self.status_line
        self.headers = checked_headers(headers or {})
        if status == 401 and "www-authenticate" not in (name.lower() for name in self.headers):
            self.headers["WWW-Authenticate"] = "Bearer"

    def __reduce__(self) -> tuple[type[Reject], tuple[int, str, dict[str, str]]]:
        """Pickled by its fields (to cross a process, as any exception may)."""
        return type(self), (self.status, self.reason, dict(self.headers))

    def response(self) -> tuple[str, str, tuple[tuple[str, str], ...]]:
        """Status line, reason and headers, checked again now (they may have been changed since)."""
        check_status(self.status)
        line = status_line(self.status)
        reason = str(self.reason).strip()
        return line, reason.splitlines()[0] if reason else line, tuple(checked_headers(self.headers).items())

    @property
    def status_line(self) -> str:
        """``401 Unauthorized``."""
        return status_line(self.status)


def check_status(status: object) -> None:
    """A refusal's status must be an int in 400-599; ValueError with one line if not."""
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        raise ValueError(f"Reject needs an HTTP error status (an int, 400-599), not {status!r}")


def status_line(status: int) -> str:
    """``401 Unauthorized``; the bare number for a status without a phrase."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)
