"""Text from outside, as one log line: what a peer sends cannot forge a line or flood the log.

Every line that shows a message, a request path, a close reason or a file's
path goes through here, on both sides and in the trace.
"""

from __future__ import annotations

import itertools

#: Characters of a text message shown in its log line and trace event; a
#: longer one shows these and its size (:func:`describe_message`).
PREVIEW_LIMIT = 200


def printable(text: str) -> str:
    """Text safe to put in one log line: line breaks, escape sequences and other
    unprintable characters shown as ``\\n``, ``\\x1b``, and a backslash as two,
    so a peer can neither forge a line, nor move the terminal's cursor, nor
    pass a real ``\\n`` off as an escaped line break."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(map(_escaped, text))


def shown_path(path: str) -> str:
    """A file's path as one line shows it: as it is, or quoted and escaped if empty or unprintable."""
    return path if path and printable(path) == path else repr(path)


def _escaped(character: str) -> str:
    if character.isprintable() and character != "\\":
        return character
    return character.encode("unicode_escape").decode()


def describe_message(message: str | bytes) -> str:
    """How a message is shown in a log line and a trace event, on both sides.

    Text as :func:`printable` shows it; a text whose shown form is longer
    than :data:`PREVIEW_LIMIT` characters by the start of it that fits and
    its size, ``aaa... (100000 bytes in all)``, so that one message is one
    line of bounded length; binary by size.
    """
    if not isinstance(message, str):
        return f"<binary message, {len(message)} bytes>"
    if len(message) <= PREVIEW_LIMIT and message.isprintable() and "\\" not in message:
        return message
    pieces, used = [], 0
    for character in itertools.islice(message, PREVIEW_LIMIT):
        piece = _escaped(character)
        if used + len(piece) > PREVIEW_LIMIT:
            break
        pieces.append(piece)
        used += len(piece)
    else:
        if len(message) <= PREVIEW_LIMIT:
            return "".join(pieces)
    return f"{''.join(pieces)}... ({len(message.encode())} bytes in all)"
