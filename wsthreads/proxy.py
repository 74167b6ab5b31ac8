"""The client's way through an HTTP proxy: which proxy a URL takes, and the CONNECT tunnel.

As websocket-client and websockets do, the client takes its proxy from the
environment by default: ``wss_proxy``/``https_proxy`` for ``wss://``,
``ws_proxy``/``http_proxy`` for ``ws://``, then ``all_proxy``, unless
``no_proxy`` names the host. A proxy is an ``http://`` URL, with Basic
credentials if it needs them (``http://user:secret@proxy:3128``); the client
asks it to ``CONNECT`` to the server's host and port, and the WebSocket
(TLS first, for ``wss://``, checked against the server's name, not the
proxy's) runs inside that tunnel. Everything counts against the dial's
deadline, which the caller arms on the socket.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import socket
import urllib.request
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from .lines import printable

#: The most of a proxy's answer to CONNECT that is read: its status line and headers.
MAX_ANSWER = 16 * 1024
#: A proxy's statuses after which a later dial may succeed: the proxy, or the server
#: behind it, is down or busy for now (500: tinyproxy's "Unable to connect").
RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})


class ProxyError(Exception):
    """The proxy would not, or could not, open the tunnel: one line, and whether to retry."""

    def __init__(self, proxy: Proxy, problem: str, retryable: bool = False) -> None:
        super().__init__(f"the proxy {proxy} {problem}")
        self.proxy = proxy
        self.retryable = retryable


class Proxy(NamedTuple):
    """An HTTP proxy: where it is, and its Basic credentials (None: none)."""

    host: str
    port: int
    credentials: str | None

    @classmethod
    def parse(cls, url: str) -> Proxy:
        """From ``http://[user:secret@]host[:port]`` (``host:port`` alone, as curl takes it);
        ValueError in one line, without the credentials, for anything else."""
        if "://" not in url:
            url = f"http://{url}"
        scheme, _, rest = url.partition("://")
        # The credentials end at the last '@': a password may hold '/', '?', '#' or '@'.
        userinfo, at, address = rest.rpartition("@")
        if scheme.lower() != "http":
            raise ValueError(f"proxy URL {shown(url)}: scheme {scheme!r} is not supported (http:// only)")
        try:
            parts = urlsplit(f"http://{address}")
            port = parts.port
        except ValueError:
            raise ValueError(f"malformed proxy URL {shown(url)}: expected http://HOST:PORT") from None
        if not parts.hostname:
            raise ValueError(f"malformed proxy URL {shown(url)}: no host (e.g. http://proxy.example:3128)")
        credentials = None
        if at:
            user, _, secret = userinfo.partition(":")
            credentials = base64.b64encode(f"{unquote(user)}:{unquote(secret)}".encode()).decode()
        return cls(parts.hostname, port or 80, credentials)

    def __str__(self) -> str:
        """``http://proxy.example:3128``: never the credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __repr__(self) -> str:
        return f"Proxy({str(self)!r}{', with credentials' if self.credentials else ''})"


def shown(url: str) -> str:
    """A proxy URL for a message, quoted: everything up to its last '@' (the credentials) left out."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    address = rest.rpartition("@")[2]
    return repr(printable(f"{scheme}{separator}{address}"))


def proxy_for(setting: str | bool | None, host: str, port: int, secure: bool) -> Proxy | None:
    """The proxy a dial to ``host:port`` goes through: ``setting`` as ``ClientConfig.proxy`` has it.

    True: from the environment (None where ``no_proxy`` names the host);
    None or False: none; a string: that proxy (``""``: none).

    Raises:
        ValueError: an environment variable or a setting that is not an
            ``http://`` proxy URL, in one line.
    """
    if setting is True:
        proxies = urllib.request.getproxies_environment()
        url = proxies.get("wss" if secure else "ws") or proxies.get("https" if secure else "http")
        url = url or proxies.get("all")
        if not url or bypassed(host, port, proxies.get("no", "")):
            return None
    elif isinstance(setting, str) and setting:
        url = setting
    else:
        return None
    return Proxy.parse(url)


def bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``no_proxy`` names ``host``: ``*``, the host or a domain it is in
    (``example.com``, ``.example.com``), with or without ``:port``, an address
    (``[::1]`` too), or a network its address is in (``10.0.0.0/8``)."""
    host = host_key(host)
    for entry in (entry.strip() for entry in no_proxy.split(",")):
        if entry == "*":
            return True
        if entry.startswith("["):  # [IPv6] or [IPv6]:port
            name, _, rest = entry[1:].partition("]")
            entry_port = rest[1:] if rest.startswith(":") else ""
        elif entry.count(":") == 1:
            name, _, entry_port = entry.partition(":")
        else:
            name, entry_port = entry, ""
        if entry_port and entry_port != str(port):
            continue
        name = host_key(name.lstrip("."))
        if name and (host == name or host.endswith(f".{name}") or in_network(host, name)):
            return True
    return False


def host_key(name: str) -> str:
    """A host name as no_proxy compares it: lower case, no final dot, ASCII (IDNA) form."""
    name = name.lower().rstrip(".")
    try:
        return name if name.isascii() else name.encode("idna").decode("ascii")
    except UnicodeError:
        return name


def in_network(host: str, network: str) -> bool:
    """Whether the address ``host`` is in ``network`` (False when either is no address)."""
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


def open_tunnel(sock: socket.socket, proxy: Proxy, host: str, port: int) -> None:
    """Ask ``proxy``, connected on ``sock``, for a tunnel to ``host:port``; return once it is open.

    The server speaks only after we have (the TLS ClientHello, the HTTP
    request), so the proxy's answer must end where what it sent ends: bytes
    after it are refused, not read as the server's.

    Raises:
        ProxyError: ``the proxy http://p:3128 refused the tunnel to
            example.com:443: HTTP 407 Proxy Authentication Required``,
            ``... closed the connection before answering``.
        OSError: the socket failed otherwise (the deadline shut it down).
    """
    name = host.encode("idna").decode("ascii") if not host.isascii() else host
    target = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
    request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if proxy.credentials is not None:
        request += f"Proxy-Authorization: Basic {proxy.credentials}\r\n"
    answer = b""
    try:
        sock.sendall(f"{request}\r\n".encode("ascii"))
        while b"\r\n\r\n" not in answer:
            if len(answer) > MAX_ANSWER:
                raise ProxyError(proxy, f"answered CONNECT with over {MAX_ANSWER} bytes of headers")
            data = sock.recv(4096)
            if not data:
                raise ProxyError(proxy, "closed the connection before answering", retryable=True)
            answer += data
    except ConnectionError:
        raise ProxyError(proxy, "reset the connection before answering", retryable=True) from None
    except TimeoutError:  # the socket's own timeout, the dial's deadline, may come before the cut
        raise ProxyError(proxy, "did not answer CONNECT in time", retryable=True) from None
    head, _, extra = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    status = re.fullmatch(r"HTTP/1\.[01] ([0-9]{3})(?: (.*))?", status_line)
    if status is None:
        raise ProxyError(proxy, f"answered CONNECT with {printable(status_line[:80])!r}")
    code, phrase = int(status[1]), status[2] or ""
    if not 200 <= code < 300:
        raise ProxyError(
            proxy,
            f"refused the tunnel to {target}: HTTP {code} {printable(phrase[:80])}".rstrip(),
            retryable=code in RETRYABLE_STATUSES,
        )
    if extra:
        raise ProxyError(proxy, "sent bytes after its answer to CONNECT, before the server could speak")
