"""wsthreads.lines: what a peer sends becomes one log line of bounded length, never a forged one."""

from __future__ import annotations

from wsthreads.lines import PREVIEW_LIMIT, describe_message, printable, shown_path


def test_printable_text_stays_as_it_is() -> None:
    assert printable("héllo wörld ✓") == "héllo wörld ✓"


def test_line_breaks_escapes_and_backslashes_cannot_forge_a_line_or_move_the_cursor() -> None:
    assert printable("a\nb") == "a\\nb"
    assert printable("\x1b[2J") == "\\x1b[2J"
    assert printable("a\\nb") == "a\\\\nb"  # a real backslash-n is not passed off as a line break
    assert "\n" not in printable("x\r\n\u2028y")


def test_a_long_message_shows_its_start_and_its_size_in_one_bounded_line() -> None:
    shown = describe_message("a" * 100_000)
    assert shown == "a" * PREVIEW_LIMIT + "... (100000 bytes in all)"
    escaped = describe_message("\n" * 1000)  # each escape takes two characters of the preview
    assert escaped.startswith("\\n" * (PREVIEW_LIMIT // 2) + "...") and escaped.endswith(
        "(1000 bytes in all)"
    )
    assert describe_message("x" * PREVIEW_LIMIT) == "x" * PREVIEW_LIMIT
    assert describe_message("ünï") == "ünï"


def test_binary_is_shown_by_its_size() -> None:
    assert describe_message(b"\x00\xff" * 10) == "<binary message, 20 bytes>"


def test_a_path_is_quoted_when_empty_or_unprintable() -> None:
    assert shown_path("/tmp/trace.json") == "/tmp/trace.json"
    assert shown_path("") == "''"
    assert shown_path("a\nb.json") == "'a\\nb.json'"
