"""The client: dial with websocket-client, then run the same connection core as the server.

websocket-client does what it is good at: the URL, the HTTP handshake,
headers. We open the TCP connection and the TLS session ourselves, so that a
deadline bounds the whole dial (websocket-client's timeout bounds each read,
and a server that drips its answer one byte at a time never trips it) and a
``close()`` from another thread can cut a dial short. We check the server's
answer strictly (:func:`wsthreads.handshake.check_response`) and follow no
redirect. Then a :class:`~wsthreads.connection.Connection` owns the socket.

:class:`WebSocketClient` is the one client, of the command-line program and
of your code alike: dial, run a session, and with ``reconnect`` dial again
after a growing backoff when the session ended with a code that means "try
again"; ``close()`` wins over a pending dial. :func:`dial` is the step under
it: one connection, its reader not started.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import websocket

from . import trace
from .backoff import BACKOFF, STABLE_SESSION, backoff_delays
from .certificates import load_certificate, trusting
from .closing import RETRYABLE_CODES, CloseCode, Closed
from .connection import (
    CLOSE_TIMEOUT,
    MAX_MESSAGE_SIZE,
    WRITE_TIMEOUT,
    Connection,
    Message,
    shut_down,
)
from .deadlines import deadlines
from .deflate import Agreement, Deflate, compression_setting
from .deflate import accept as accept_compression
from .deflate import offer as compression_offer
from .handshake import (
    check_header,
    check_response,
    new_key,
    repeated_header,
    response_fields,
    subprotocol_names,
)
from .lines import printable, shown_path
from .lookup import resolve
from .proxy import Proxy, ProxyError, open_tunnel, proxy_for
from .queues import Inbox
from .session import Handler, SessionCode, run_session
from .settings import check_count, check_seconds

log = logging.getLogger("wsthreads.client")

DEFAULT_URL = "ws://localhost:8080/ws"
#: Seconds for the whole dial: TCP connect, TLS, and the opening handshake.
DIAL_TIMEOUT = 10.0
#: HTTP statuses of a refused handshake that are worth another try later.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Received messages that may wait to be taken (see ``ClientConfig.max_queue``).
CLIENT_MAX_QUEUE = 1024
#: Headers the opening handshake sets itself (lower case): ``ClientConfig.headers`` may not.
RESERVED_HEADERS = dict.fromkeys(
    (
        "host",
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
    ),
    "the WebSocket handshake itself",
)
#: Headers websocket-client writes itself (Origin always, Cookie from its cookie jar).
#: Given in ``ClientConfig.headers`` they go in as its options of the same name, so that
#: ours replaces its Origin and joins its Cookie instead of doubling the header.
HEADER_OPTIONS = frozenset({"origin", "cookie"})

#: What ``ClientConfig.headers`` accepts: (name, value) pairs, or a mapping.
HeaderSettings = Mapping[str, str] | Iterable[tuple[str, str]]


class ConnectError(Exception):
    """The client could not open a session; the message is one line.

    ``retryable`` is False when dialing again cannot help: a bad URL, a
    refusal such as 403 or 404, an untrusted certificate, a wrong handshake.
    """

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class NotConnected(Exception):
    """``send()`` found no open connection: not yet, no longer, or between reconnects.

    The client raises rather than queues: a message is either on the wire or
    the caller knows it is not, so nothing is silently held and lost.
    """


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """How the client dials, and the limits its connections run under.

    Attributes:
        timeout: seconds for the whole dial (TCP, TLS, opening handshake).
        cafile: PEM file of CA certificates to trust for ``wss://``
            (default: the system's).
        certfile: PEM certificate (chain) to show a server that asks for one
            (mutual TLS); its private key too, unless ``keyfile`` holds it.
        keyfile: PEM private key of ``certfile``.
        ssl_context: an :class:`ssl.SSLContext` of your own for ``wss://``
            (custom verification, a client certificate from elsewhere);
            instead of ``cafile``, ``certfile`` and ``keyfile``.
        max_message_size: largest incoming message in bytes (None: no limit);
            a larger one closes with 1009 before its payload is read.
        write_timeout: seconds one write may take before the server counts
            as not reading.
        close_timeout: seconds a close may take before the connection is cut.
        headers: extra headers for the opening handshake, as (name, value)
            pairs (a dict or a list of pairs is fine too; they become a
            tuple), e.g. ``{"Authorization": "Bearer TOKEN"}``. Each name at
            most once; the headers the handshake sets itself
            (:data:`RESERVED_HEADERS`) may not be given.
        subprotocols: the subprotocols to offer, most preferred first. The
            server picks one of them or none; a server that picks another
            fails the dial (ConnectError). The choice is ``conn.subprotocol``.
        ping_interval: seconds between keepalive pings to the server (None,
            the default: no pings); a server that has not answered one by
            the next is closed with 1011 "keepalive ping timeout".
        max_queue: received messages that may wait to be taken
            (:meth:`WebSocketClient.recv`, ``conn.recv()``). When that many
            wait, the reader stops reading until one is taken: TCP then tells
            the server to slow down. Default 1024 (websockets: 16), so that a
            program may send many requests before it reads the answers; with
            ``max_message_size`` it bounds the memory they take.
        proxy: the HTTP proxy to go through: True (the default) takes it
            from the environment as websocket-client does (``https_proxy``
            for ``wss://``, ``http_proxy`` for ``ws://``, ``all_proxy``,
            ``no_proxy``); a URL, ``http://[user:secret@]host:port``, that
            one; None: none (see :mod:`wsthreads.proxy`).
        unix_socket: the path of a Unix socket to connect to instead of the
            URL's host and port (a server behind nginx, gunicorn bound to
            ``unix:PATH``); the URL still gives the ``Host`` header, the
            path and the query, and ``wss://`` still means TLS.
        compression: offer permessage-deflate: ``"deflate"``, or a
            :class:`~wsthreads.deflate.Deflate`. None (the default): no
            offer, and a server that compresses anyway fails the dial. What
            was agreed is ``conn.compression`` (None if the server declined).

    Raises:
        ValueError: a setting that cannot work, with a one-line message:
            ``header 'Upgrade' is set by the WebSocket handshake itself``,
            ``not a valid subprotocol name (an RFC 7230 token): 'chat v2'``,
            ``ping_interval must be a number of seconds above 0 (None: off): 0``,
            ``cannot use the CA file ca.pem: No such file or directory``,
            ``cannot use the certificate client.pem: no private key in it (give the key file too)``.
        TypeError: ``headers`` or ``subprotocols`` of the wrong shape, e.g.
            ``subprotocols is a sequence of names, e.g. ('chat',)``.
    """

    timeout: float = DIAL_TIMEOUT
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    ssl_context: ssl.SSLContext | None = dataclasses.field(default=None, repr=False, compare=False)
    max_message_size: int | None = MAX_MESSAGE_SIZE
    write_timeout: float = WRITE_TIMEOUT
    close_timeout: float = CLOSE_TIMEOUT
    headers: tuple[tuple[str, str], ...] = ()
    subprotocols: tuple[str, ...] = ()
    ping_interval: float | None = None
    max_queue: int = CLIENT_MAX_QUEUE
    unix_socket: str | None = None
    proxy: str | bool | None = dataclasses.field(default=True, repr=False)  # it may hold a password
    compression: Deflate | str | None = None
    # The context made of cafile, certfile and keyfile: their files are read once, here.
    _files_context: ssl.SSLContext | None = dataclasses.field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # Frozen, but a dict or a list is fine too: stored as tuples.
        object.__setattr__(self, "headers", header_pairs(self.headers))
        object.__setattr__(self, "subprotocols", subprotocol_names(self.subprotocols))
        object.__setattr__(self, "compression", compression_setting(self.compression))
        check_seconds("ping_interval", self.ping_interval, optional=True)
        check_count("max_queue", self.max_queue)
        check_count("max_message_size", self.max_message_size, optional=True)
        for name in ("timeout", "write_timeout", "close_timeout"):
            check_seconds(name, getattr(self, name))
        if isinstance(self.proxy, str) and self.proxy:
            Proxy.parse(self.proxy)  # a malformed URL or another scheme: said now
        elif not isinstance(self.proxy, (str, bool, type(None))):
            raise TypeError(f"proxy is a URL, True (from the environment) or None, not {self.proxy!r}")
        files = (self.cafile, self.certfile, self.keyfile)
        for name, file in zip(("cafile", "certfile", "keyfile"), files, strict=True):
            if file is not None and not isinstance(file, str):
                raise TypeError(f"{name} is the path of a PEM file, as a str: {file!r}")
        if self.ssl_context is not None and not isinstance(self.ssl_context, ssl.SSLContext):
            raise TypeError(f"ssl_context is an ssl.SSLContext: {self.ssl_context!r}")
        if self.ssl_context is not None and any(file is not None for file in files):
            raise ValueError("give ssl_context, or cafile, certfile and keyfile, not both")
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("keyfile needs certfile")
        if self.cafile is not None or self.certfile is not None:
            # A file that is missing or not PEM: said now, not at the first dial.
            context = trusting(self.cafile)
            if self.certfile is not None:
                load_certificate(context, self.certfile, self.keyfile)
            object.__setattr__(self, "_files_context", context)


def tls_context(config: ClientConfig) -> ssl.SSLContext:
    """The client's TLS context: ``ssl_context``, the one made of the config's files, or the system's."""
    return config.ssl_context or config._files_context or trusting(None)


def header_pairs(headers: HeaderSettings) -> tuple[tuple[str, str], ...]:
    """``headers`` as a tuple of checked (name, value) pairs (:func:`~wsthreads.handshake.check_header`).

    Raises:
        ValueError: a header that may not be sent (see :func:`~wsthreads.handshake.check_header`),
            or one given twice: ``header 'Accept' is given twice (join its
            values with ', ')``.
        TypeError: anything but a mapping or pairs of strings, e.g.
            ``a header is a (name, value) pair of strings: 'Accept'``.
    """
    if isinstance(headers, str):
        raise TypeError(f"headers are (name, value) pairs or a dict, e.g. {{'Accept': {headers!r}}}")
    given = headers.items() if isinstance(headers, Mapping) else headers
    pairs: list[tuple[str, str]] = []
    for pair in given:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise TypeError(f"a header is a (name, value) pair of strings: {pair!r}")
        name, value = pair
        check_header(name, value, RESERVED_HEADERS)
        if name.lower() in (known.lower() for known, _ in pairs):
            raise ValueError(f"header {name!r} is given twice (join its values with ', ')")
        pairs.append((name, value))
    return tuple(pairs)


def parse_url(url: str) -> tuple[str, int, bool]:
    """Host, port and whether TLS is used.

    Raises:
        ConnectError: (``retryable`` False) for anything but ``ws://`` or ``wss://``:
            ``invalid URL 'http://x/ws': expected ws://HOST:PORT/PATH or wss://HOST:PORT/PATH``.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ConnectError(f"invalid URL {url!r}: {error}", retryable=False) from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConnectError(
            f"invalid URL {url!r}: expected ws://HOST:PORT/PATH or wss://HOST:PORT/PATH", retryable=False
        )
    secure = parts.scheme == "wss"
    return parts.hostname, port or (443 if secure else 80), secure


#: Characters a URL's path and query keep as they are (RFC 3986's delimiters, and ``%`` for
#: escapes already made); any other, such as ``ö`` or a space, goes out percent-encoded.
URL_SAFE = ":/?#[]@!$&'()*+,;=%"


def wire_url(url: str) -> str:
    """``url`` as it goes in the request line: ``ws://host/ws?room=k%C3%B6ln`` for ``...?room=köln``.

    The host becomes its IDNA (ASCII) form; the server's ``request.path``
    and ``request.query`` give the text back.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if not netloc.isascii():
        host = (parts.hostname or "").encode("idna").decode("ascii")
        netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(
        (parts.scheme, netloc, quote(parts.path, safe=URL_SAFE), quote(parts.query, safe=URL_SAFE), "")
    )


def dial(
    url: str,
    config: ClientConfig | None = None,
    *,
    track: Callable[[socket.socket], None] | None = None,
    name: str = "reader",
) -> Connection:
    """Open a connection to ``url`` within ``config.timeout`` seconds, all steps together.

    Non-ASCII in the URL's path or query goes out percent-encoded
    (``?room=köln`` as ``?room=k%C3%B6ln``), as a browser sends it.
    The request carries ``config.headers`` and offers ``config.subprotocols``;
    the server's choice becomes ``conn.subprotocol``. ``track`` is told the
    socket as soon as it exists (and again after TLS wraps it), so another
    thread can shut it down to cut the dial short. Returns the connection,
    its reader not started yet.

    Raises:
        ConnectError: on any failure, with a one-line explanation.
            ``retryable`` is True when a later dial may succeed:
            ``cannot connect to ws://localhost:8080/ws: connection refused
            (is the server running?)``, ``no answer from ... within 10 s``,
            ``... refused the WebSocket handshake: HTTP 503 Service
            Unavailable: too many connections (limit 100)``. It is False
            when it cannot: ``invalid URL ...``, ``... refused the WebSocket
            handshake: HTTP 401 Unauthorized: authentication required``,
            ``the TLS certificate of ... is not trusted: ...``, ``... answered
            the handshake wrongly: subprotocol 'chat' was never offered``.
    """
    config = config or ClientConfig()
    host, port, secure = parse_url(url)
    deadline = time.monotonic() + config.timeout
    context = tls_context(config) if secure else None
    proxy = None
    if config.unix_socket is not None:
        sock = open_unix(url, config.unix_socket, config, deadline, track)
    else:
        try:
            proxy = proxy_for(config.proxy, host, port, secure)
        except ValueError as error:  # the environment's proxy URL
            raise ConnectError(
                f"{error}, from the environment (https_proxy, http_proxy, all_proxy)", retryable=False
            ) from None
        if proxy is not None:
            sock = open_tcp(f"the proxy {proxy}", proxy.host, proxy.port, config, deadline, track)
        else:
            sock = open_tcp(url, host, port, config, deadline, track)
    armed = deadlines.arm(sock, max(deadline - time.monotonic(), 0))
    try:
        if proxy is not None:
            open_tunnel(sock, proxy, host, port)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
            deadlines.retarget(armed, sock)  # the plain socket object gave its descriptor away
            if track is not None:
                track(sock)
            sock.do_handshake()
        key = new_key()
        options = handshake_options(key, config)
        recorder = ResponseRecorder(sock)
        ws = websocket.create_connection(
            wire_url(url), socket=recorder, redirect_limit=0, enable_multithread=False, **options
        )
        fields = answer_fields(url, bytes(recorder.received))
        subprotocol = accepted_subprotocol(url, ws, key, config.subprotocols, fields)
        response_headers = dict(fields)
        compression = accepted_compression(url, fields, config)
    except ConnectError:
        sock.close()
        raise
    except Exception as error:
        sock.close()
        message = describe_dial_error(url, config, error, deadline)
        raise ConnectError(message, retryable=is_retryable(error)) from error
    finally:
        deadlines.disarm(armed)
    # websocket-client reads the response one byte at a time: nothing of the
    # first frames is left in its buffers, and from here on we read.
    return Connection(
        sock,
        client=True,
        max_message_size=config.max_message_size,
        ping_interval=config.ping_interval,
        write_timeout=config.write_timeout,
        close_timeout=config.close_timeout,
        name=name,
        max_queue=config.max_queue,
        subprotocol=subprotocol,
        key=key,
        response_headers=response_headers,
        compression=compression,
    )


def handshake_options(key: str, config: ClientConfig) -> dict[str, Any]:
    """websocket-client's options for our request: our key, the subprotocols, the extra headers.

    websocket-client takes our key only from a dict (``header={...}``), and
    adds Host, Upgrade, Connection, Sec-WebSocket-Version and Origin itself.
    The subprotocols go in as a header rather than as its ``subprotocols``
    option, whose check fails a server that picks none (RFC 6455 allows it;
    our server does it) and ignores case; :func:`check_response` checks.
    """
    fields = {"Sec-WebSocket-Key": key}
    if config.subprotocols:
        fields["Sec-WebSocket-Protocol"] = ", ".join(config.subprotocols)
    if isinstance(config.compression, Deflate):
        fields["Sec-WebSocket-Extensions"] = compression_offer(config.compression)
    options: dict[str, Any] = {"header": fields}
    for name, value in config.headers:
        if name.lower() in HEADER_OPTIONS:
            options[name.lower()] = value
        else:
            fields[name] = value
    return options


class ResponseRecorder:
    """The dial's socket, as websocket-client reads the server's 101 through it: what it read is kept.

    websocket-client keeps one line of a header the server sends on several (its headers
    are a dict, the last line wins): the extensions, which may come on several lines, and
    the headers that must come once are checked on every line (:func:`response_fields`).
    It reads the head a byte at a time, and nothing after it (tests/test_client.py).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.received = bytearray()

    def recv(self, size: int) -> bytes:
        data = self._sock.recv(size)
        self.received += data
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def answer_fields(url: str, head: bytes) -> list[tuple[str, str]]:
    """The header lines of the server's 101 (see :func:`~wsthreads.handshake.response_fields`).

    Raises:
        ConnectError: (``retryable`` False) a malformed line: ``ws://localhost:8080/ws
            answered the handshake wrongly: malformed header line 'X-Y : z'``.
    """
    try:
        return response_fields(head)
    except ValueError as error:
        raise ConnectError(f"{url} answered the handshake wrongly: {error}", retryable=False) from None


def accepted_subprotocol(
    url: str, ws: websocket.WebSocket, key: str, offered: Sequence[str], fields: Sequence[tuple[str, str]]
) -> str | None:
    """The subprotocol the server's 101 picked, or None.

    Raises:
        ConnectError: (``retryable`` False) if the answer is not a 101 that
            fits our request: ``ws://localhost:8080/ws answered the handshake
            wrongly: wrong Sec-WebSocket-Accept`` (or ``HTTP 301 instead of
            101 (redirects are not followed)``, ``subprotocol 'x' was never offered``).
    """
    headers = dict(fields)
    twice = repeated_header(fields)
    if ws.getstatus() != 101:
        problem: str | None = f"HTTP {ws.getstatus()} instead of 101 (redirects are not followed)"
    elif twice is not None:
        problem = f"header {twice!r} came more than once"
    else:
        problem = check_response(headers, key, offered)
    if problem is not None:
        raise ConnectError(f"{url} answered the handshake wrongly: {problem}", retryable=False)
    return headers.get("sec-websocket-protocol", "").strip() or None


def accepted_compression(
    url: str, fields: Sequence[tuple[str, str]], config: ClientConfig
) -> Agreement | None:
    """What the server's 101 agreed for permessage-deflate; None if nothing was offered or it declined.

    Raises:
        ConnectError: (``retryable`` False) an extension never offered, or an
            answer the offer does not allow: ``ws://localhost:8080/ws answered
            the handshake wrongly: extension 'permessage-deflate' was never offered``.
    """
    setting = config.compression if isinstance(config.compression, Deflate) else None
    # Several lines of it are one list (RFC 6455 9.1).
    extensions = ", ".join(value for name, value in fields if name == "sec-websocket-extensions" and value)
    try:
        return accept_compression(extensions, setting)
    except ValueError as error:
        raise ConnectError(f"{url} answered the handshake wrongly: {error}", retryable=False) from None


def open_tcp(
    url: str,
    host: str,
    port: int,
    config: ClientConfig,
    deadline: float,
    track: Callable[[socket.socket], None] | None,
) -> socket.socket:
    """TCP-connect to the first address of ``host`` that answers, all within the deadline.

    Each socket is shown to ``track`` before it connects, so a close() can
    cut even this step short.

    Raises:
        ConnectError: (``retryable`` True) ``cannot find the host of
            ws://nowhere.invalid/ws: Name or service not known``, ``cannot
            connect to ...: connection refused (is the server running?)``,
            ``no answer from ... within 10 s``; whatever ``track`` raises
            (:class:`WebSocketClient` raises ConnectError, ``retryable`` False, once closed).
    """
    error: OSError = TimeoutError()
    try:
        addresses = resolve(host, port, deadline, track)  # ends by the deadline, or on close()
    except OSError as failure:
        raise ConnectError(describe_dial_error(url, config, failure, deadline)) from failure
    for family, kind, proto, _, address in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock = socket.socket(family, kind, proto)
        try:
            if track is not None:
                track(sock)
            sock.settimeout(left)
            sock.connect(address)
            return sock
        except OSError as failure:
            sock.close()
            error = failure
        except BaseException:
            sock.close()
            raise
    raise ConnectError(describe_dial_error(url, config, error, deadline)) from error


def open_unix(
    url: str,
    path: str,
    config: ClientConfig,
    deadline: float,
    track: Callable[[socket.socket], None] | None,
) -> socket.socket:
    """Connect to the Unix socket at ``path`` within the deadline (shown to ``track`` first).

    Raises:
        ConnectError: (``retryable`` True) ``cannot connect to
            ws://localhost/ws: no Unix socket at /run/app.sock (is the server
            running?)``, ``... nothing listens on /run/app.sock ...``.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if track is not None:
            track(sock)
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.connect(path)
        return sock
    except OSError as error:
        sock.close()
        where = shown_path(path)
        if isinstance(error, FileNotFoundError):
            message = f"cannot connect to {url}: no Unix socket at {where} (is the server running?)"
        elif isinstance(error, ConnectionRefusedError):
            message = f"cannot connect to {url}: nothing listens on {where} (is the server running?)"
        elif isinstance(error, TimeoutError):
            message = f"no answer from {url} within {config.timeout:g} s"
        else:
            message = f"cannot connect to {url} through the Unix socket {where}: {error.strerror or error}"
        raise ConnectError(message) from error
    except BaseException:
        sock.close()
        raise


def describe_dial_error(url: str, config: ClientConfig, error: BaseException, deadline: float) -> str:
    """One line telling why dialing ``url`` failed (``no answer from URL within 10 s``); never raises."""
    if isinstance(error, ProxyError):
        if time.monotonic() >= deadline:
            return f"no answer from the proxy {error.proxy} within {config.timeout:g} s"
        return str(error)
    if isinstance(error, websocket.WebSocketBadStatusException):
        if not isinstance(error.status_code, int):  # no status line it could read
            return f"{url} answered the handshake wrongly (no HTTP status line)"
        if 200 <= error.status_code < 300:
            return (
                f"{url} answered like a plain web server (HTTP {describe_status(error)}) and did not"
                " upgrade: is this a WebSocket endpoint?"
            )
        return f"{url} refused the WebSocket handshake: HTTP {describe_status(error)}"
    if (
        isinstance(error, ssl.SSLError) and error.reason == "WRONG_VERSION_NUMBER"
    ):  # it answered in plain text
        plain = "ws://" + url.partition("://")[2]
        return f"{url}: the server does not speak TLS on that port; try {plain}"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"the TLS certificate of {url} is not trusted: {error.verify_message} (see --cafile)"
    if isinstance(error, ssl.SSLError) and error.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED":
        return f"{url} asks for a client certificate, and we showed none (see --certfile)"
    if (
        isinstance(error, ssl.SSLError)
        and error.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"
        and not showed(config)
    ):
        # TLS 1.2's answer to no certificate, among other mismatches.
        guess = "does it ask for a client certificate? see --certfile"
        return f"TLS handshake with {url} failed: handshake failure ({guess})"
    if isinstance(error, ssl.SSLError) and error.reason in CLIENT_CERTIFICATE_REFUSED:
        return f"{url} refused our client certificate: {error.reason.replace('_', ' ').lower()}"
    if time.monotonic() >= deadline or isinstance(error, (websocket.WebSocketTimeoutException, TimeoutError)):
        return f"no answer from {url} within {config.timeout:g} s"
    if isinstance(error, socket.gaierror):
        return f"cannot find the host of {url}: {error.strerror or error}"
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake with {url} failed: {error.reason or error}"
    if isinstance(error, ConnectionRefusedError):
        return f"cannot connect to {url}: connection refused (is the server running?)"
    if isinstance(error, websocket.WebSocketException) and "Redirect" in str(error):
        return f"{url} answered with a redirect, which is not followed"
    if isinstance(error, websocket.WebSocketException) and "header" in str(error).lower():
        return f"{url} answered the handshake wrongly ({error})"
    if isinstance(error, (websocket.WebSocketConnectionClosedException, ConnectionResetError)):
        # TLS 1.3 ends the client's handshake before the server checks its certificate:
        # a refusal may come as a plain close, its alert lost.
        guess = ""
        if url.startswith("wss:"):
            guess = (
                " (did it refuse our client certificate?)"
                if showed(config)
                else " (does it ask for a client certificate? see --certfile)"
            )
        return f"{url} closed the connection during the handshake{guess}"
    return f"cannot connect to {url}: {error}"


def showed(config: ClientConfig) -> bool:
    """Whether the dial offered a client certificate (or a context of its own, which may)."""
    return config.certfile is not None or config.ssl_context is not None


#: TLS alerts of a server that did not accept the client's certificate.
CLIENT_CERTIFICATE_REFUSED = frozenset(
    {
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "TLSV1_ALERT_ACCESS_DENIED",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
    }
)


def is_retryable(error: BaseException) -> bool:
    """Whether a dial that failed with ``error`` may succeed later; never raises."""
    if isinstance(error, websocket.WebSocketBadStatusException):
        return error.status_code in RETRYABLE_STATUSES
    if isinstance(error, ProxyError):
        return error.retryable
    if isinstance(error, (ssl.SSLCertVerificationError, ValueError)):
        return False
    if isinstance(error, ssl.SSLError) and error.reason in CLIENT_CERTIFICATE_REFUSED:
        return False
    # websocket-client says what went wrong only in its words ("Invalid header", "Redirect"):
    # tests/test_client.py fails if they change.
    words = str(error).lower()
    wrong_answer = "header" in words or "redirect" in words
    return not (isinstance(error, websocket.WebSocketException) and wrong_answer)


def describe_status(error: websocket.WebSocketBadStatusException) -> str:
    """``404 Not Found: no such path; ...``: the status line and the server's reason; never raises."""
    # websocket-client 1.9.0 does not keep the reason phrase.
    phrase = getattr(error, "status_message", None)
    if not phrase:
        try:
            phrase = HTTPStatus(error.status_code).phrase
        except ValueError:
            phrase = ""
    text = printable(f"{error.status_code} {phrase}".strip())  # the server's words: escaped
    body = getattr(error, "resp_body", None)
    if isinstance(body, bytes):
        line = body.decode(errors="replace").strip().splitlines()
        if line and len(line[0]) <= 200 and "<" not in line[0]:
            text += f": {printable(line[0])}"
    return text


class Resuming(Protocol):
    """What a reconnecting client is given to pick up where it was (``resume=``).

    The client calls :meth:`next_url` before each dial, :meth:`opened` with
    each new connection and :meth:`seen` with each message, in its threads,
    one at a time. :class:`wsthreads.pubsub.Resume` is one.
    """

    def next_url(self, url: str) -> str:
        """The URL to dial now, given the client's."""
        ...

    def opened(self, conn: Connection) -> None:
        """A new connection is open (its 101's headers are in ``conn.response_headers``)."""
        ...

    def seen(self, message: Message) -> None:
        """A message arrived (in the reader thread, before it is handed over)."""
        ...


class _Lifecycle:
    """One client's lifecycle, under :class:`WebSocketClient`.

    :meth:`run` dials (unless given a first connection), runs a session with a
    handler, and with ``reconnect`` dials again after the session ends with a
    code that means "try again" (1001, 1006, 1011-1014): a policy violation or
    a protocol error is final. The backoff keeps growing across sessions that
    end quickly and starts over after one that lasted :data:`STABLE_SESSION`.
    :meth:`close` may come from any thread at any time and wins: over a
    session (closed with its code), a backoff delay, and a dial in progress.
    Creating one never raises (the settings are checked by :class:`ClientConfig`).
    """

    def __init__(
        self,
        url: str,
        config: ClientConfig,
        *,
        reconnect: bool = False,
        backoff: tuple[float, float] = BACKOFF,
        reader_name: str = "reader",
        resume: Resuming | None = None,
    ) -> None:
        self.url = url
        #: Where the sessions are: each dial goes where it says.
        self.resume = resume
        self.config = config
        self.reconnect = reconnect
        self.backoff = backoff
        self.reader_name = reader_name
        self._closing = threading.Event()
        self._close_with: tuple[int, str] = (CloseCode.NORMAL_CLOSURE, "")
        #: Why reconnecting stopped, when a redial was refused for good (a 403, a bad certificate).
        self.gave_up: ConnectError | None = None
        self._lock = threading.Lock()  # guards the two fields below
        self._conn: Connection | None = None
        self._dialing: socket.socket | None = None

    @property
    def connection(self) -> Connection | None:
        """The open connection, if there is one now; never raises."""
        with self._lock:
            conn = self._conn
        return conn if conn is not None and not conn.done.is_set() else None

    def in_reader(self) -> bool:
        """True when called from the reader thread of the current connection; never raises."""
        with self._lock:
            conn = self._conn
        return conn is not None and threading.current_thread() is conn.reader

    def dial(self) -> Connection:
        """Dial once; the connection, its reader not started.

        Raises:
            ConnectError: the dial failed (see :func:`dial` for the messages
                and ``retryable``), or close() came first or during it:
                ``the client was closed while dialing ws://...`` (``retryable`` False).
        """
        try:
            url = self.url if self.resume is None else self.resume.next_url(self.url)
            with trace.span("dial", url=url):
                conn = dial(url, self.config, track=self._track, name=self.reader_name)
        except ConnectError as error:
            if self._closing.is_set():  # the dial failed because close() cut it short: say that
                closed = f"the client was closed while dialing {self.url}"
                raise ConnectError(closed, retryable=False) from error
            raise
        finally:
            with self._lock:
                self._dialing = None
        if self.resume is not None:
            self.resume.opened(conn)
        with self._lock:
            if not self._closing.is_set():
                self._conn = conn
                agreed = [f"subprotocol {conn.subprotocol}"] if conn.subprotocol else []
                agreed += ["permessage-deflate"] if conn.compression else []
                chosen = f" ({', '.join(agreed)})" if agreed else ""
                log.info("connected to %s%s", self.url, chosen, extra=conn.log_fields)
                return conn
        # close() came during the dial: this connection is ours to end, cleanly.
        conn.start()
        conn.close(*self._close_with)
        conn.wait_closed()
        raise ConnectError(f"the client was closed while dialing {self.url}", retryable=False)

    def run(
        self, handler: SessionCode, *, linger: float | None = None, first: Connection | None = None
    ) -> Closed:
        """Sessions with ``handler`` until one ends for good; how the last one ended.

        Returns the :class:`Closed` of the last session (it is returned, not
        raised). Later failed dials are logged and retried (unless they
        cannot succeed).

        Raises:
            ConnectError: the first dial failed (only without ``first``); see
                :meth:`dial`.
        """
        conn = first or self.dial()
        delays = backoff_delays(*self.backoff)
        while True:
            started = time.monotonic()
            closed = run_session(conn, handler, linger=linger)
            with self._lock:
                self._conn = None
            if self._closing.is_set() or not self.reconnect or closed.code not in RETRYABLE_CODES:
                return closed
            if time.monotonic() - started >= STABLE_SESSION:
                delays = backoff_delays(*self.backoff)
            again = self._redial(delays)
            if again is None:
                return closed
            conn = again

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """End everything from any thread: the session with ``code``, a dial, the reconnecting.

        Returns at once (the session ends within ``close_timeout``); never raises.
        """
        with self._lock:
            if not self._closing.is_set():
                self._close_with = (code, reason)
                self._closing.set()
            conn, dialing = self._conn, self._dialing
        shut_down(dialing)
        if conn is not None:
            conn.close(code, reason)

    def _redial(self, delays: Iterator[float]) -> Connection | None:
        for delay in delays:
            log.info("reconnecting to %s in %.1f s", self.url, delay, extra={"session": self.reader_name})
            with trace.span("backoff", seconds=round(delay, 3)):
                closing = self._closing.wait(delay)
            if closing:
                return None
            try:
                return self.dial()
            except ConnectError as error:
                if self._closing.is_set():
                    return None
                log.warning("reconnect failed: %s", error, extra={"session": self.reader_name})
                if not error.retryable:
                    self.gave_up = error
                    return None
        raise AssertionError("backoff_delays never ends")

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            if self._closing.is_set():
                raise ConnectError(f"the client was closed while dialing {self.url}", retryable=False)
            self._dialing = sock


def check_handler(handler: object) -> None:
    """TypeError, one line, unless ``handler`` is a Handler object or a function ``handler(conn)``."""
    if isinstance(handler, type):
        raise TypeError(f"handler is an object or a function: {handler.__name__}(), not the class")
    if hasattr(handler, "on_message") or hasattr(handler, "run"):
        missing = [name for name in ("on_message", "run") if not callable(getattr(handler, name, None))]
        if missing:
            raise TypeError(f"a Handler object needs on_message and run; {handler!r} has no {missing[0]}")
    elif not callable(handler):
        raise TypeError(f"handler is a Handler object or a function handler(conn), not {handler!r}")


class _HandOver:
    """The session code of a client without a handler: hand every message over; nothing to send."""

    def __init__(self, deliver: Callable[[Message], None]) -> None:
        self.deliver = deliver

    def on_message(self, conn: Connection, message: Message) -> None:
        """Pass it on (in the reader thread)."""
        self.deliver(message)

    def run(self, conn: Connection) -> None:
        """Nothing: the caller sends with :meth:`WebSocketClient.send`."""


class _Resumed:
    """A handler whose every message ``resume`` is told of first."""

    def __init__(self, handler: Handler, resume: Resuming) -> None:
        self.handler = handler
        self.resume = resume

    def on_message(self, conn: Connection, message: Message) -> None:
        """Note the message's place, then handle it (in the reader thread)."""
        self.resume.seen(message)
        self.handler.on_message(conn, message)

    def run(self, conn: Connection) -> None:
        """The handler's own work."""
        self.handler.run(conn)


class WebSocketClient:
    """A WebSocket client for synchronous code, usable from any thread: the one client.

    ::

        with WebSocketClient("ws://localhost:8080/ws", on_message=print) as client:
            client.send("job 1: 10 % done")

        with WebSocketClient(url, headers={"Authorization": "Bearer TOKEN"}, subprotocols=["chat"]) as client:
            client.send("hello")
            for message in client:  # until the session ends for good
                print(message)

        closed = WebSocketClient(url, handler=Echo(), reconnect=True).run()  # in this thread

    Threads: :meth:`connect` (or ``with``) dials in the caller's thread, so a
    failure raises ConnectError right there. Then a ``reader`` thread
    delivers every message to ``on_message``, to ``handler`` or, without
    either, to the ``messages`` queue, which :meth:`recv` and iteration read;
    and a ``supervisor`` thread runs the sessions and, with ``reconnect``,
    dials again after a backoff. :meth:`run` does the supervisor's work in
    the caller's thread instead, until the sessions end for good (the
    command-line client's way). ``send()`` may be called from any thread; it
    raises NotConnected while there is no open connection. ``close()`` is
    idempotent, ends the reader, the supervisor and the socket, and returns
    within ``close_timeout`` plus a second.

    The queue holds at most ``max_queue`` messages (default 1024): when it is
    full the reader waits for one to be taken and stops reading, and TCP
    tells the server to slow down. Meanwhile nothing is read, so a close or a
    ping timeout from the server is seen once you take a message again;
    ``close()`` ends the wait at once.

    Args:
        url: the server, ``ws://`` or ``wss://``.
        on_message: called in the reader thread with every message;
            without it (and without ``handler``) messages go to the
            ``messages`` queue.
        handler: per-connection code, as the server's
            (:mod:`wsthreads.session`): a :class:`~wsthreads.session.Handler`
            object (``on_message`` in the reader thread, ``run`` in the
            session's) or a function ``handler(conn)`` that reads with
            ``conn.recv``; it runs once per session. Not with ``on_message``.
        reconnect: dial again when the server goes away or the connection
            drops (1001, 1006, 1011-1014), until close().
        backoff: first and largest delay between two dials.
        resume: makes this client's :class:`Resuming`, which says where each
            dial goes and is told of every session and message.
            ``resume=wsthreads.pubsub.Resume`` resumes a subscription (see
            docs/howto/publish.md). None: every redial asks for the same URL.
            (A maker, not an object: one per client, as two clients sharing
            one would redial each other's place.)
        **settings: the fields of :class:`ClientConfig` (``timeout``,
            ``cafile``, ``max_message_size``, ``headers``, ``subprotocols``,
            ``ping_interval``, ``max_queue``, ...).

    Raises:
        ValueError: a bad setting, before any dial: ``header 'Host' is set by
            the WebSocket handshake itself``, ``max_queue must be a whole number of at least 1: 0``
            (see :class:`ClientConfig`), or ``on_message`` with ``handler``.
        TypeError: a setting :class:`ClientConfig` does not have
            (``... got an unexpected keyword argument 'timout'``), or one of the wrong shape.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        on_message: Callable[[Message], None] | None = None,
        handler: SessionCode | None = None,
        reconnect: bool = False,
        backoff: tuple[float, float] = BACKOFF,
        resume: Callable[[], Resuming] | None = None,
        **settings: object,
    ) -> None:
        self.url = url
        config = ClientConfig(**settings)  # type: ignore[arg-type]
        #: Messages received, when neither ``on_message`` nor ``handler`` was given: what
        #: :meth:`recv` and iteration read (a :class:`queue.Queue`: ``get(timeout=...)`` works too).
        self.messages: Inbox[Message] = Inbox(config.max_queue)
        #: What each dial asks and is told (made by ``resume=``), if anything.
        self.resume = None if resume is None else resume()
        self._handler = self._session_code(on_message, handler)
        self._delivers = on_message is not None or handler is not None  # elsewhere than the queue
        self._client = _Lifecycle(url, config, reconnect=reconnect, backoff=backoff, resume=self.resume)
        self._lock = threading.Lock()  # guards _started and _supervisor
        self._started = False  # connect() or run() was called: a client runs its sessions once
        self._supervisor: threading.Thread | None = None
        #: How the last session ended, once it has.
        self.closed: Closed | None = None

    def _session_code(
        self, on_message: Callable[[Message], None] | None, handler: SessionCode | None
    ) -> SessionCode:
        """What each session runs: ``handler``, or the hand-over to ``on_message`` or the queue."""
        if handler is not None and on_message is not None:
            raise ValueError("give on_message or handler, not both: a handler has its own on_message")
        if handler is not None:
            check_handler(handler)
        if handler is None:
            handler = _HandOver(on_message or self.messages.deliver)
        if self.resume is None:
            return handler
        if not hasattr(handler, "on_message"):
            raise ValueError("resume needs every message: give a Handler object, not a function handler")
        return _Resumed(handler, self.resume)  # type: ignore[arg-type]

    def connect(self) -> WebSocketClient:
        """Open the connection (once; again it does nothing) and return the client.

        The sessions then run in the ``supervisor`` thread.

        Raises:
            ConnectError: the first dial failed, with a one-line message and
                ``retryable`` (see :func:`dial`): ``cannot connect to
                ws://localhost:8080/ws: connection refused (is the server
                running?)`` (True), ``ws://localhost:8080/ws refused the
                WebSocket handshake: HTTP 401 Unauthorized: authentication
                required`` (False); or close() came first or during the dial:
                ``the client was closed while dialing ws://...`` (False).
            RuntimeError: :meth:`run` was called on this client.
        """
        # Under the lock for the whole dial: a close() meanwhile cuts the dial short,
        # then waits here, and so never misses a supervisor about to start.
        with self._lock:
            if self._supervisor is None:
                if self._started:
                    raise RuntimeError("this client runs its sessions in run(): connect() is not for it")
                first = self._client.dial()
                self._started = True
                self._supervisor = threading.Thread(
                    target=self._supervise, args=(first,), name="supervisor", daemon=True
                )
                self._supervisor.start()
        return self

    def run(self, linger: float | None = None) -> Closed:
        """Dial and run the sessions in this thread until they end for good; how the last one ended.

        Go's ``for { conn := dial(); serve(conn) }`` in one call. With a
        :class:`~wsthreads.session.Handler`, each session lasts until the peer
        closes or, with ``linger``, goes quiet for that many seconds once
        ``run`` is done; a function handler's, until it returns. ``close()``
        from another thread (a signal handler's) ends it, even mid-dial.

        Raises:
            ConnectError: the first dial failed (see :meth:`connect`); or, with
                ``reconnect``, a redial was refused for good (``retryable``
                False, e.g. a 403 once the token was revoked), as :meth:`recv` does.
            ValueError: ``linger`` is not a number of seconds above 0 (or None).
            RuntimeError: the client was already started (connect() or run()).
        """
        check_seconds("linger", linger, optional=True)
        with self._lock:
            if self._started:
                raise RuntimeError("this client was already started: a client runs its sessions once")
            self._started = True
        try:
            first = self._client.dial()
        except ConnectError:
            with self._lock:
                self._started = False  # nothing ran: connect() or run() may try again, as after connect()
            raise
        self._supervise(first, linger)
        if self._client.gave_up is not None:
            raise self._client.gave_up
        assert self.closed is not None
        return self.closed

    @property
    def connected(self) -> bool:
        """True while a connection is open (it may still drop at any time); never raises."""
        return self._client.connection is not None

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol of the open connection (None: none agreed, or no connection); never raises."""
        conn = self._client.connection
        return None if conn is None else conn.subprotocol

    @property
    def compression(self) -> Agreement | None:
        """What the open connection agreed for permessage-deflate (None: none, or no connection)."""
        conn = self._client.connection
        return None if conn is None else conn.compression

    def send(self, message: Message, *, compress: bool = True) -> None:
        """Send text (str) or binary (bytes) from any thread, bounded by ``write_timeout``.

        ``compress=False``: with compression agreed, this message goes as it
        is (keep secrets out of a history attacker-chosen text shares).

        Raises:
            NotConnected: there is no open connection: ``not connected to
                ws://localhost:8080/ws``; or it closed under the send:
                ``connection to ws://localhost:8080/ws closed: 1006
                (connection lost) 'the peer is not reading'``.
        """
        conn = self._client.connection
        if conn is None:
            raise NotConnected(f"not connected to {self.url}")
        try:
            conn.send(message, compress=compress)
        except Closed as closed:
            raise NotConnected(f"connection to {self.url} closed: {closed}") from None

    def recv(self, timeout: float | None = None) -> Message:
        """The next message from the queue, waiting at most ``timeout`` seconds (None: no limit).

        With ``reconnect`` it waits across reconnects; messages received
        before the end are all returned first.

        Raises:
            TimeoutError: nothing came in time: ``no message within 0.5 s``.
            Closed: the client is over for good (closed, or the session ended
                and no reconnect follows) and the queue is empty; it carries
                the last session's ``code`` and ``reason``: ``1000 (normal
                closure)``, ``1011 (internal error) 'keepalive ping timeout'``.
            ConnectError: with ``reconnect``, a redial was refused for good
                (``retryable`` False, e.g. a 403 once the token was revoked):
                why the client stopped, once the queue is empty.
            NotConnected: connect() was never called (or failed):
                ``not connected to ws://...: call connect() first``.
            RuntimeError: ``on_message`` or ``handler`` was given, so messages go there:
                ``recv() and iteration are not available: messages go to on_message or the handler``.
        """
        self._check_receiving()
        return self.messages.recv(timeout)

    def __iter__(self) -> Iterator[Message]:
        """``for message in client``: every message, until :meth:`recv` would raise Closed.

        Raises:
            NotConnected, RuntimeError: as :meth:`recv`, at once.
            ConnectError: at the end, when reconnecting was refused for good (as :meth:`recv`).
        """
        self._check_receiving()
        return self.messages.until(Closed)

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close with ``code`` and stop reconnecting; idempotent, bounded, never raises.

        Returns within ``close_timeout`` plus a second, even when the queue is
        full and nobody reads it. From your ``on_message`` or handler (the
        client's own threads) it only asks and returns: they must be free to
        finish the closing handshake. A :meth:`run` in another thread returns
        within the same bound.
        """
        self._client.close(code, reason)
        self.messages.stop_waiting()  # a reader waiting for room must go on, to see the close
        with self._lock:
            supervisor = self._supervisor
        # Not from the client's own threads (on_message in the reader, a handler in the
        # supervisor): they must go on, to finish the session.
        if supervisor not in (None, threading.current_thread()) and not self._client.in_reader():
            supervisor.join(self._client.config.close_timeout + 1.0)

    def __enter__(self) -> WebSocketClient:
        """:meth:`connect`, with its ConnectError."""
        return self.connect()

    def __exit__(self, *exc_info: object) -> None:
        """:meth:`close`; never raises."""
        self.close()

    def _check_receiving(self) -> None:
        if self._delivers:
            raise RuntimeError(
                "recv() and iteration are not available: messages go to on_message or the handler"
            )
        # Read without the lock, which connect() holds for its whole dial.
        if not self._started:
            raise NotConnected(f"not connected to {self.url}: call connect() first")

    def _supervise(self, first: Connection | None, linger: float | None = None) -> None:
        """The sessions, from ``first`` (None: dial it here) until they end for good."""
        try:
            self.closed = self._client.run(self._handler, linger=linger, first=first)
        finally:  # over for good: recv() raises how, once the rest is taken
            ended = self.closed or Closed(CloseCode.ABNORMAL_CLOSURE, "the client stopped", by_peer=False)
            self.messages.end(self._client.gave_up or ended)
