"""Limits per client address and per connection: token buckets, and who is over them.

- :class:`AddressLimits`: sessions open per client address, and new
  connections per address per second. The app asks at admission, before
  the handshake is answered or a session's thread is spent: over either, the
  client gets 429 with ``Retry-After``.
- :class:`InboundLimit`: messages and bytes per second one connection may
  send. Its reader asks for every frame it completes (a ping or a pong is a
  message here too) and for every read's bytes (fragments of an unfinished
  message and control frames count); over either, the connection is
  closed with 1008 and a reason saying which limit (rather than paused: a
  pause would keep the flood's connection, its buffers and its reader, for a
  client that by the limit's own definition is misbehaving; a close frees all
  of that, and tells the client why).

Each bucket holds one second's worth and refills at its rate; a full one
lends what one take asks (one read's bytes), and what comes next waits for
the debt. The address table stays small: an address leaves it once it has
no session open and its bucket is full again. The limits are the process's:
under gunicorn, each worker counts its own.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time

from .handshake import Refusal

#: Seconds a client is told to wait (``Retry-After``) when its address has too many sessions
#: open: when one of them ends is unknown, so a guess long enough not to hammer.
SESSIONS_RETRY_AFTER = 5
#: Addresses the bucket table holds before its idle entries are first swept out; after a
#: sweep, the next comes at twice what was left (at least this): amortised, a flood from
#: many addresses costs a constant per connection, not a sweep each.
SWEEP_AT = 4096


class TokenBucket:
    """``rate`` tokens a second, holding one second's worth (at least one); a full one lends."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.tokens = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens if there are as many, or the bucket is full (then it goes into debt)."""
        self.refill(now)
        if amount <= self.tokens or self.tokens >= self.capacity:
            self.tokens -= amount
            return True
        return False

    def wait(self) -> float:
        """Seconds until the next take succeeds (after a refill)."""
        return max(1 - self.tokens, 0) / self.rate

    def full(self, now: float) -> bool:
        self.refill(now)
        return self.tokens >= self.capacity


class AddressLimits:
    """Sessions open per address, and new connections per address per second (None: no limit)."""

    def __init__(self, max_sessions: int | None, connection_rate: float | None) -> None:
        self.max_sessions = max_sessions
        self.connection_rate = connection_rate
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._sweep_at = SWEEP_AT

    @property
    def active(self) -> bool:
        return self.max_sessions is not None or self.connection_rate is not None

    def admit(self, address: str) -> Refusal | None:
        """Count a new connection from ``address`` in, or the 429 it gets instead."""
        address = client_key(address)
        now = time.monotonic()
        with self._lock:
            if self.connection_rate is not None:
                bucket = self._buckets.get(address)
                if bucket is None:
                    if len(self._buckets) >= self._sweep_at:
                        self._sweep(now)
                    bucket = self._buckets[address] = TokenBucket(self.connection_rate, now)
                if not bucket.take(1, now):
                    return too_many(
                        f"too many new connections from your address (limit {self.connection_rate:g}/s)",
                        bucket.wait(),
                        "address-rate",
                    )
            opened = self._open.get(address, 0)
            if self.max_sessions is not None and opened >= self.max_sessions:
                return too_many(
                    f"too many sessions from your address (limit {self.max_sessions})",
                    SESSIONS_RETRY_AFTER,
                    "address-sessions",
                )
            self._open[address] = opened + 1
        return None

    def leave(self, address: str) -> None:
        """A connection :meth:`admit` let in is over."""
        address = client_key(address)
        with self._lock:
            left = self._open.get(address, 0) - 1
            if left > 0:
                self._open[address] = left
            else:
                self._open.pop(address, None)

    def _sweep(self, now: float) -> None:
        """Forget the buckets that are full again (under the lock): they would start full anyway."""
        for address in [a for a, bucket in self._buckets.items() if bucket.full(now)]:
            del self._buckets[address]
        self._sweep_at = max(SWEEP_AT, 2 * len(self._buckets))


def client_key(address: str) -> str:
    """What a limit per address counts by: an IPv4 address, or an IPv6 address's /64.

    One IPv6 client usually holds a whole /64 (2**64 addresses); counted
    per address, it could open as many connections as it likes.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address


def too_many(text: str, retry_after: float, cause: str) -> Refusal:
    """A 429 saying ``text``, with ``Retry-After`` in whole seconds (at least 1)."""
    seconds = max(1, math.ceil(retry_after))
    return Refusal("429 Too Many Requests", text, (("Retry-After", str(seconds)),), cause)


class InboundLimit:
    """Messages and bytes a second one connection may send (None: no limit); used by its reader only."""

    __slots__ = ("_bytes", "_messages")

    def __init__(self, messages_per_second: float | None, bytes_per_second: float | None) -> None:
        now = time.monotonic()
        self._messages = None if messages_per_second is None else TokenBucket(messages_per_second, now)
        self._bytes = None if bytes_per_second is None else TokenBucket(bytes_per_second, now)

    def messages_over(self) -> str | None:
        """Count one message (or control frame) in; the close reason if it is over the limit, else None."""
        if self._messages is not None and not self._messages.take(1, time.monotonic()):
            return f"too many messages (limit {self._messages.rate:g}/s)"
        return None

    def bytes_over(self, size: int) -> str | None:
        """Count ``size`` bytes read; the close reason if they are over the limit, else None."""
        if self._bytes is not None and not self._bytes.take(size, time.monotonic()):
            return f"too many bytes (limit {self._bytes.rate:g}/s)"
        return None
