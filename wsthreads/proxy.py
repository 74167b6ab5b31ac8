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
        """From ``http://[user:secret@]host[:port]``; ValueError in one line for anything else."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as error:
            raise ValueError(f"malformed proxy URL {shown(url)}: {error}") from None
        if parts.scheme != "http":
            scheme = parts.scheme or "none"
            raise ValueError(f"proxy URL {shown(url)}: scheme {scheme!r} is not supported (http:// only)")
        if not parts.hostname:
            raise ValueError(f"malformed proxy URL {shown(url)}: no host (e.g. http://proxy.example:3128)")
        credentials = None
        if parts.username is not None:
            user, secret = unquote(parts.username), unquote(parts.password or "")
            credentials = base64.b64encode(f"{user}:{secret}".encode()).decode()
        return cls(parts.hostname, port or 80, credentials)

    def __str__(self) -> str:
        """``http://proxy.example:3128``: never the credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def shown(url: str) -> str:
    """A proxy URL for a message, quoted: its credentials never in a log."""
    return repr(printable(re.sub(r"//[^/]*@", "//", url, count=1)))


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
    (``example.com``, ``.example.com``), with or without ``:port``, or a network
    its address is in (``10.0.0.0/8``)."""
    host = host.lower()
    for entry in (entry.strip().lower() for entry in no_proxy.split(",")):
        if entry == "*":
            return True
        name, colon, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if not colon:
            name = entry
        elif entry_port != str(port):
            continue
        name = name.lstrip(".")
        if name and (host == name or host.endswith(f".{name}") or in_network(host, name)):
            return True
    return False


def in_network(host: str, network: str) -> bool:
    """Whether the address ``host`` is in ``network`` (False when either is no address)."""
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


def open_tunnel(sock: socket.socket, proxy: Proxy, host: str, port: int) -> None:
    """Ask ``proxy``, connected on ``sock``, for a tunnel to ``host:port``; return once it is open.

    Nothing of the tunnel is read here: the server speaks only after we
    have (the TLS ClientHello, the HTTP request), so the answer's end is
    the end of what the proxy sent.

    Raises:
        ProxyError: ``the proxy http://p:3128 refused the tunnel to
            example.com:443: HTTP 407 Proxy Authentication Required``,
            ``... closed the connection before answering``.
        OSError: the socket failed (the deadline shut it down, a reset).
    """
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if proxy.credentials is not None:
        request += f"Proxy-Authorization: Basic {proxy.credentials}\r\n"
    sock.sendall(f"{request}\r\n".encode("ascii"))
    answer = b""
    while b"\r\n\r\n" not in answer:
        if len(answer) > MAX_ANSWER:
            raise ProxyError(
                proxy, f"the proxy {proxy} answered CONNECT with over {MAX_ANSWER} bytes of headers"
            )
        data = sock.recv(4096)
        if not data:
            raise ProxyError(
                proxy, f"the proxy {proxy} closed the connection before answering", retryable=True
            )
        answer += data
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    version, _, rest = status_line.partition(" ")
    code, _, phrase = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ProxyError(proxy, f"answered CONNECT with {printable(status_line[:80])!r}")
    if not code.startswith("2"):
        raise ProxyError(
            proxy,
            f"refused the tunnel to {target}: HTTP {code} {printable(phrase[:80])}".rstrip(),
            retryable=int(code) in RETRYABLE_STATUSES,
        )
