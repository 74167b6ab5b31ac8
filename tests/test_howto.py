"""Every Python snippet of the how-to guides (docs/howto/*.md) and of the README runs, and says what they say.

Each fenced block marked ``python`` is a complete program: it is written to a
file and run with this interpreter in a fresh subprocess, from an empty
directory (so it can only use the installed ``wsthreads``). Snippets start
their own servers on port 0 and shut them down, so they need nothing else.
A program must exit with status 0 and print no traceback. When the next
fenced block after it is marked ``text``, that block is what the program
prints on stdout, line for line, with three allowances:

* times (``20:56:57.191``) and ports (``127.0.0.1:41235``) may differ;
* ``...`` in an expected line stands for any text (as in doctest);
* trailing spaces do not count.

Stderr is not compared (Werkzeug's request log and our warnings go there),
but it is shown when a snippet fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
from helpers import ROOT

pytestmark = pytest.mark.slow  # needs outside programs or runs whole programs: see the README

HOWTO = ROOT / "docs" / "howto"
README = ROOT / "README.md"
#: Seconds one snippet may take; they are written to take one or two.
SNIPPET_TIMEOUT = 20.0

FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
TIME = re.compile(r"\b\d{2}:\d{2}:\d{2}\.\d{3}\b")
PORT = re.compile(r"\b(127\.0\.0\.1|localhost):\d{1,5}\b")


class Snippet(NamedTuple):
    """A ``python`` block, where it is, and the ``text`` block after it (None if there is none)."""

    path: Path
    line: int
    code: str
    expected: str | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def snippets(path: Path) -> list[Snippet]:
    """The python blocks of a Markdown file, each with the expected output that follows it."""
    text = path.read_text()
    blocks = [
        (match.group(1), match.group(2), text.count("\n", 0, match.start()) + 1)
        for match in FENCE.finditer(text)
    ]
    found = []
    for index, (lang, body, line) in enumerate(blocks):
        if lang != "python":
            continue
        follows = blocks[index + 1] if index + 1 < len(blocks) else None
        expected = follows[1] if follows is not None and follows[0] == "text" else None
        found.append(Snippet(path, line, body, expected))
    return found


def guides() -> list[Path]:
    return sorted(HOWTO.glob("*.md"))


ALL = [snippet for path in [*guides(), README] for snippet in snippets(path)]


def normalized(text: str) -> list[str]:
    """Lines with times and ports replaced by placeholders, trailing spaces gone."""
    text = PORT.sub(r"\1:PORT", TIME.sub("HH:MM:SS.mmm", text))
    return [line.rstrip() for line in text.rstrip("\n").splitlines()]


def line_pattern(expected: str) -> re.Pattern[str]:
    """An expected line as a pattern: literal, except that ``...`` matches anything."""
    return re.compile(".*".join(re.escape(part) for part in expected.split("...")))


def mismatch(expected: str, actual: str) -> str | None:
    """Why ``actual`` is not what ``expected`` says, or None if it is."""
    want, got = normalized(expected), normalized(actual)
    for number, (pattern, line) in enumerate(zip(want, got, strict=False), 1):
        if not line_pattern(pattern).fullmatch(line):
            return f"line {number}: expected {pattern!r}, got {line!r}"
    if len(want) != len(got):
        return f"expected {len(want)} lines, got {len(got)}"
    return None


@pytest.mark.parametrize("snippet", ALL, ids=[snippet.name for snippet in ALL])
def test_snippet_runs_and_prints_what_the_page_says(snippet: Snippet, tmp_path: Path) -> None:
    program = tmp_path / "snippet.py"
    program.write_text(snippet.code)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(program)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SNIPPET_TIMEOUT,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONIOENCODING": "utf-8"},
    )
    took = time.monotonic() - started
    report = (
        f"{snippet.name} (exit {result.returncode}, {took:.1f} s)\n"
        f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    )
    assert result.returncode == 0, report
    assert "Traceback" not in result.stderr, report
    if snippet.expected is not None:
        problem = mismatch(snippet.expected, result.stdout)
        assert problem is None, f"{problem}\n{report}"


def test_every_guide_has_snippets_and_each_shows_its_output() -> None:
    """A guide is a runnable snippet and what it prints: no snippet without its output."""
    assert len(guides()) >= 8
    for path in guides():
        if path.name == "README.md":
            continue
        found = snippets(path)
        assert found, f"{path.name} has no python snippet"
        for snippet in found:
            assert snippet.expected is not None, f"{snippet.name}: no ```text block with its output"


def test_the_readme_embedding_snippets_are_run_too() -> None:
    readme = snippets(README)
    assert readme, "the README's embedding section lost its snippets"
    assert all(snippet.expected is not None for snippet in readme)


def test_the_index_and_the_readme_link_every_guide() -> None:
    index = (HOWTO / "README.md").read_text()
    readme = README.read_text()
    for path in guides():
        if path.name == "README.md":
            continue
        assert f"]({path.name})" in index, f"docs/howto/README.md does not link {path.name}"
        assert f"](docs/howto/{path.name})" in readme, f"README.md does not link {path.name}"


#: Submodules a snippet may import: the optional integrations and the pub/sub layer, each
#: with its own public names.
INTEGRATIONS = {
    "django": {"authenticate", "closing_db"},
    "pubsub": {"Broker", "BrokerError", "MemoryBroker", "Resume", "open_broker", "publish"},
}


def test_snippets_use_only_the_public_names() -> None:
    """``from wsthreads import X`` and ``wsthreads.X``: X is in ``wsthreads.__all__``; of the
    submodules, only an integration's own names (``from wsthreads.django import authenticate``)."""
    import wsthreads

    for snippet in ALL:
        for module, line in re.findall(r"^from wsthreads\.(\w+) import (.+)$", snippet.code, re.MULTILINE):
            assert {name.strip() for name in line.split(",")} <= INTEGRATIONS.get(module, set()), snippet.name
        code = re.sub(r"^from wsthreads\.(\w+) import .+$", "", snippet.code, flags=re.MULTILINE)
        assert not re.search(r"\b(from|import) wsthreads\.", code), snippet.name
        imported = re.findall(r"^from wsthreads import (.+)$", code, re.MULTILINE)
        names = {name.strip() for line in imported for name in line.split(",")}
        names |= set(re.findall(r"\bwsthreads\.(\w+)", code))
        assert names <= set(wsthreads.__all__), f"{snippet.name}: {names - set(wsthreads.__all__)}"


def test_relative_links_and_cited_tests_exist() -> None:
    """Links to files resolve, and every ``tests/test_x.py::test_name`` cited names a real test."""
    for path in [*guides(), README]:
        text = path.read_text()
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", text):
            assert (path.parent / target).exists(), f"{path.name}: broken link {target}"
        for test_file, test_name in re.findall(r"(tests/test_\w+\.py)::(test_\w+)", text):
            defined = re.search(rf"^def {test_name}\(", (ROOT / test_file).read_text(), re.MULTILINE)
            assert defined, f"{path.name}: no {test_file}::{test_name}"
        for test_file in re.findall(r"\btests/test_\w+\.py\b", text):
            assert (ROOT / test_file).exists(), f"{path.name}: no {test_file}"


def test_the_figures_the_pages_state_are_the_codes() -> None:
    """Each default the prose gives in numbers is the constant it comes from (or a test says it)."""
    from wsthreads.app import PING_INTERVAL
    from wsthreads.backoff import BACKOFF, STABLE_SESSION
    from wsthreads.client import CLIENT_MAX_QUEUE, DIAL_TIMEOUT, RETRYABLE_STATUSES
    from wsthreads.closing import RETRYABLE_CODES
    from wsthreads.connection import CLOSE_TIMEOUT, MAX_QUEUE, OUTBOUND_LIMIT, WRITE_TIMEOUT

    redial = {1001, 1006, 1011, 1012, 1013, 1014}
    statuses = {408, 429, 500, 502, 503, 504}
    figures = [
        ("own-loop.md", "16 by default on the server", MAX_QUEUE == 16),
        ("own-loop.md", "and 1024 on the client", CLIENT_MAX_QUEUE == 1024),
        ("own-loop.md", "the server every 25 s by default", PING_INTERVAL == 25),
        ("own-loop.md", "its `write_timeout` (10 s by default)", WRITE_TIMEOUT == 10),
        ("broadcast.md", "`outbound_limit` bytes (1 MiB by default", OUTBOUND_LIMIT == 1 << 20),
        ("broadcast.md", "limit 1048576", OUTBOUND_LIMIT == 1048576),
        ("broadcast.md", "`close_timeout`, 1 s,", CLOSE_TIMEOUT == 1),
        ("broadcast.md", "(`write_timeout`, 10 s by default)", WRITE_TIMEOUT == 10),
        ("reconnect.md", "the first redial after 0.25 to 0.5 s", BACKOFF[0] == 0.5),
        ("reconnect.md", "`backoff=(0.5, 30.0)` by default", BACKOFF == (0.5, 30.0)),
        ("reconnect.md", "end within 10 s of their start", STABLE_SESSION == 10),
        ("reconnect.md", "1001 (going away", 1001 in RETRYABLE_CODES),
        ("reconnect.md", "and 1013 (try again later", redial == RETRYABLE_CODES),
        ("errors.md", "408, 429, 500, 502, 503 or 504", statuses == RETRYABLE_STATUSES),
        ("errors.md", "`timeout` (10 s by default)", DIAL_TIMEOUT == 10),
        ("../../README.md", "`outbound_limit` (1 MiB)", OUTBOUND_LIMIT == 1 << 20),
        ("../../README.md", "about 2 s (the close bound plus a second)", CLOSE_TIMEOUT + 1 == 2),
        ("../../README.md", "1001, 1006 and 1011-1014", redial == RETRYABLE_CODES),
    ]
    for page, phrase, holds in figures:
        text = " ".join((HOWTO / page).read_text().split())
        assert phrase in text, f"{page} no longer says {phrase!r}: update this list"
        assert holds, f"{page} says {phrase!r}, which the code no longer does"


def test_the_output_check_itself() -> None:
    """The allowances, and nothing more: times, ports, ``...``, trailing spaces."""
    assert mismatch("20:56:57.191 ws://127.0.0.1:41235/ws", "09:01:02.003 ws://127.0.0.1:5/ws  ") is None
    assert mismatch("got 0000 ... 0299 (... of 300)", "got 0000 0001 0299 (64 of 300)") is None
    assert mismatch("a\nb", "a\nc") is not None
    assert mismatch("a", "a\nb") is not None
    assert mismatch("a\nb", "a") is not None
    assert mismatch("x (1+1)", "x (2)") is not None  # no other pattern syntax
