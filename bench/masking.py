"""Masking cost: pure Python (both ways, as ``wsthreads.frames`` picks them) against websockets' C.

    python bench/masking.py

Prints microseconds per call and per MiB for payloads of 125 B to 1 MiB, and where
pure Python switches from one big-integer XOR to a table per key byte
(``wsthreads.frames._TRANSLATE_FROM``). The C row needs websockets (``wsthreads[speedups]``).
Nothing here is a test: no figure is asserted.
"""

from __future__ import annotations

import os
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsthreads import frames

SIZES = (125, 1024, 16 * 1024, 64 * 1024, 96 * 1024, 1 << 20)


def big_integer(key: bytes, payload: bytes) -> bytes:
    length = len(payload)
    repeated = (key * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(length, "little")


def per_key_byte(key: bytes, payload: bytes) -> bytes:
    masked = bytearray(len(payload))
    for offset in range(4):
        masked[offset::4] = payload[offset::4].translate(frames._XOR_TABLES[key[offset]])
    return bytes(masked)


def time_one(function: Callable[[bytes, bytes], bytes], key: bytes, payload: bytes) -> float:
    """Seconds per call: the best of 5 repeats."""
    number = max(5, 2_000_000 // len(payload))
    return min(timeit.repeat(lambda: function(key, payload), number=number, repeat=5)) / number


def main() -> None:
    key = os.urandom(4)
    ways: dict[str, Callable[[bytes, bytes], bytes]] = {
        "python: big integer": big_integer,
        "python: table per key byte": per_key_byte,
        "python: as frames picks": frames.mask_in_python,
    }
    c = frames.accelerated_masking()
    if c is not None:
        ways["C (websockets.speedups)"] = lambda key, payload: c(payload, key)
    print(f"pure Python picks the tables from {frames._TRANSLATE_FROM} bytes on")
    print(
        f"{'way':28} " + " ".join(f"{size:>12}" for size in SIZES) + "   (µs per call; ms per MiB at 1 MiB)"
    )
    for name, function in ways.items():
        cells = []
        for size in SIZES:
            payload = os.urandom(size)
            assert function(key, payload) == big_integer(key, payload)
            cells.append(f"{time_one(function, key, payload) * 1e6:12.1f}")
        print(f"{name:28} " + " ".join(cells))


if __name__ == "__main__":
    main()
