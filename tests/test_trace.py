"""--trace: a valid Trace Event Format file, a lane per thread, every message, arrows across processes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, Program, ServerProgram, run_client, wait_until
from websockets.sync.client import connect

import wsthreads
from wsthreads import trace


def load(path: Path) -> list[dict[str, Any]]:
    """The events of a trace file, which must be valid JSON in the Trace Event Format."""
    document = json.loads(path.read_text())
    events: list[dict[str, Any]] = document["traceEvents"]
    for event in events:
        assert {"ph", "name", "pid"} <= event.keys(), event
    return events


def thread_names(events: list[dict[str, Any]]) -> dict[tuple[int, int], str]:
    """Lane names by (pid, tid): lane numbers repeat across the processes of a merged file."""
    return {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in events
        if e["ph"] == "M" and e["name"] == "thread_name"
    }


def in_lane(events: list[dict[str, Any]], lane: str, name: str) -> list[dict[str, Any]]:
    names = thread_names(events)
    return [
        e for e in events if e["ph"] != "M" and names.get((e["pid"], e["tid"])) == lane and e["name"] == name
    ]


def flows(events: list[dict[str, Any]], phase: str) -> set[int]:
    return {e["id"] for e in events if e["ph"] == phase}


@pytest.mark.slow
def test_a_traced_demo_names_every_thread_and_links_every_message(
    start_server: Callable[..., ServerProgram], tmp_path: Path
) -> None:
    server_trace, client_trace = tmp_path / "server.json", tmp_path / "client.json"
    server = start_server("--count", "3", "--interval", "0.2", "--trace", str(server_trace))
    client = run_client(
        "--url", server.url, "--count", "3", "--interval", "0.2", "--trace", str(client_trace)
    )
    assert client.returncode == 0, client.stderr
    server.signal(signal.SIGINT)
    assert server.wait() == 0
    ours, theirs = load(server_trace), load(client_trace)
    # The last line says where the file went, how many events it holds, and what opens it.
    for output, path, events in (
        (server.stdout, server_trace, ours),
        (client.stdout.splitlines(), client_trace, theirs),
    ):
        counted = sum(1 for e in events if e["ph"] != "M")
        assert output[-1].endswith(
            f" [MainThread] trace written to {path}: {counted} events; open it in ui.perfetto.dev or chrome://tracing"
        )
    assert {"MainThread", "acceptor", "conn-1", "conn-1-reader"} <= set(thread_names(ours).values())
    assert {"sender", "reader"} <= set(thread_names(theirs).values())
    # Every message, with its text, on the lane that sent or received it.
    sent = [e["args"]["text"] for e in in_lane(ours, "conn-1", "sent message")]
    assert sent == [f"server message {n} of 3" for n in (1, 2, 3)]
    received = [e["args"]["text"] for e in in_lane(theirs, "reader", "received message")]
    assert received == sent
    assert [e["args"]["text"] for e in in_lane(ours, "conn-1-reader", "received message")] == [
        f"client message {n} of 3" for n in (1, 2, 3)
    ]
    # An arrow from each sent message to the same message received, across the two files.
    assert len(flows(ours, "s")) == len(flows(theirs, "s")) == 3
    assert flows(ours, "s") == flows(theirs, "f") and flows(theirs, "s") == flows(ours, "f")
    # The waits that matter.
    assert len(in_lane(ours, "conn-1", "pause (stop.wait)")) == 2
    assert in_lane(ours, "conn-1-reader", "recv (blocked)")
    assert in_lane(ours, "conn-1", "send (under the wire lock)")
    assert in_lane(theirs, "reader", "closing handshake")
    assert in_lane(ours, "MainThread", "shutdown")


@pytest.mark.slow
def test_the_file_is_valid_after_ctrl_c_in_the_middle_of_a_session(
    start_server: Callable[..., ServerProgram], tmp_path: Path
) -> None:
    server_trace = tmp_path / "server.json"
    server = start_server("--count", "100", "--interval", "0.1", "--trace", str(server_trace))
    client = Program("sync_client.py", "--url", server.url, "--count", "100", "--interval", "0.1")
    try:
        client.wait_for("received: server message 3 of 100")
        server.signal(signal.SIGINT)
        assert server.wait() == 0
        assert client.wait() == 0
    finally:
        client.kill()
    events = load(server_trace)
    assert in_lane(events, "MainThread", "shutdown")
    closes = in_lane(events, "conn-1-reader", "close frame sent")
    assert [e["args"]["code"] for e in closes] == [1001]  # the 1001 of the shutdown, in the file


def test_merge_puts_both_processes_on_one_timeline(tmp_path: Path) -> None:
    for name, pid in (("a", 1), ("b", 2)):
        events = [{"ph": "i", "s": "t", "name": f"from {name}", "pid": pid, "tid": 7, "ts": 1.0}]
        (tmp_path / f"{name}.json").write_text(json.dumps({"traceEvents": events}))
    result = subprocess.run(
        [sys.executable, "-m", "wsthreads", "merge-traces", "a.json", "b.json", "-o", "run.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert {e["name"] for e in load(tmp_path / "run.json")} == {"from a", "from b"}
    assert (
        result.stdout
        == "merged 2 traces into run.json: 2 events; open it in ui.perfetto.dev or chrome://tracing\n"
    )
    broken = subprocess.run(
        [sys.executable, "-m", "wsthreads", "merge-traces", "missing.json", "-o", "x.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert broken.returncode == 1 and broken.stderr.count("\n") == 1 and "cannot merge" in broken.stderr


def test_the_ring_keeps_the_newest_events_and_takes_any_thread(tmp_path: Path) -> None:
    trace.start(tmp_path / "ring.json", max_events=100)
    try:

        def ticks() -> None:
            for n in range(1000):
                trace.instant("tick", n=n)

        workers = [threading.Thread(target=ticks, name=f"worker-{i}") for i in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(10)
    finally:
        written = trace.stop()
    events = load(tmp_path / "ring.json")
    kept = [e for e in events if e["name"] == "tick"]
    assert len(kept) == 100  # bounded: the oldest went
    assert written is not None and written.summary() == (
        f"trace written to {tmp_path / 'ring.json'}: 100 events (the newest 100: older ones were dropped);"
        " open it in ui.perfetto.dev or chrome://tracing"
    )
    names = thread_names(events)
    assert {names[e["pid"], e["tid"]] for e in kept} <= {f"worker-{i}" for i in range(4)}  # every lane named


@pytest.mark.slow
def test_tracing_off_makes_no_file_and_no_thread(
    start_server: Callable[..., ServerProgram], tmp_path: Path
) -> None:
    assert not trace.active()
    before = threading.active_count()
    trace.instant("nobody records this")
    with trace.span("nor this"):
        pass
    assert threading.active_count() == before
    server = start_server("--count", "1")
    result = run_client("--url", server.url, "--count", "1")
    assert result.returncode == 0
    server.signal(signal.SIGINT)
    assert server.wait() == 0
    assert not list(ROOT.glob("*.json")) and not list(tmp_path.iterdir())


def test_an_unwritable_trace_file_is_one_line_before_anything_runs(tmp_path: Path) -> None:
    result = run_client("--trace", str(tmp_path / "missing" / "dir" / "t.json"))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "cannot write the trace" in result.stderr


@pytest.mark.slow
def test_the_lessons_picture_is_made_from_a_recorded_run(tmp_path: Path) -> None:
    """bench/trace_png.py records the demo (Ctrl+C on the server included) and draws it."""
    recorded, png = tmp_path / "demo.json", tmp_path / "demo.png"
    for args in (["--record", str(recorded)], [str(recorded), str(png)]):
        result = subprocess.run(
            [sys.executable, "bench/trace_png.py", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    events = load(recorded)
    assert {"acceptor", "conn-1", "conn-1-reader", "sender", "reader"} <= set(thread_names(events).values())
    codes = [e["args"]["code"] for e in events if e["name"] == "close frame received"]
    assert codes == [1001]  # the server's 1001 reached the client
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_arrow_starts_before_it_ends(tmp_path: Path) -> None:
    """The sent instant is taken before the write: the receiver can never see a message earlier."""
    trace.start(tmp_path / "echo.json")
    try:
        app = wsthreads.create_app(echo=True, ping_interval=None)
        with wsthreads.start_server(app, "127.0.0.1", 0) as server:
            conn = wsthreads.dial(server.url)
            conn.start()
            for n in range(300):
                conn.send(f"m{n}")
                conn.recv(timeout=5)
            conn.close()
            conn.wait_closed()
    finally:
        trace.stop()
    events = load(tmp_path / "echo.json")
    starts = {e["id"]: e["ts"] for e in events if e["ph"] == "s"}
    ends = {e["id"]: e["ts"] for e in events if e["ph"] == "f"}
    assert len(starts) == 600 and starts.keys() == ends.keys()
    assert all(starts[flow] <= ends[flow] for flow in starts)


def test_queued_messages_carry_their_text_and_a_reused_thread_gets_a_lane_per_name(tmp_path: Path) -> None:
    trace.start(tmp_path / "queued.json")
    try:
        app = wsthreads.create_app(handler=lambda conn: [None for _ in conn], ping_interval=None)
        with wsthreads.start_server(app, "127.0.0.1", 0) as server, connect(server.url) as ws:
            assert app.broadcast("to everyone") == 1
            assert ws.recv(timeout=5) == "to everyone"
        thread = threading.current_thread()
        old_name, thread.name = thread.name, "conn-7"
        trace.instant("as conn-7")
        thread.name = "conn-8"
        trace.instant("as conn-8")
        thread.name = old_name
    finally:
        trace.stop()
    events = load(tmp_path / "queued.json")
    texts = [e["args"]["text"] for e in events if e["name"] == "sent message"]
    assert texts == ["to everyone"]
    names = thread_names(events)
    lanes = {names[e["pid"], e["tid"]] for e in events if e["name"] in ("as conn-7", "as conn-8")}
    assert lanes == {"conn-7", "conn-8"}


@pytest.mark.slow
def test_a_trace_that_cannot_be_written_at_the_end_is_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers: the dial waits
        url = f"ws://127.0.0.1:{silent.getsockname()[1]}/ws"
        client = Program("sync_client.py", "--url", url, "--timeout", "2", "--trace", str(folder / "t.json"))
        try:
            assert wait_until(lambda: (folder / "t.json").exists())
            (folder / "t.json").unlink()
            folder.rmdir()  # the directory goes away while the program runs
            assert client.wait() == 1
        finally:
            client.kill()
    errors = "\n".join(client.stderr)
    assert "Traceback" not in errors and "cannot write the trace" in errors


def test_merge_names_a_file_that_is_not_a_trace(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text('{"traceEvents": 5}')
    (tmp_path / "array.json").write_text('[{"ph": "i", "name": "x", "pid": 1, "tid": 1, "ts": 0}]')
    command = [sys.executable, "-m", "wsthreads", "merge-traces"]
    bad = subprocess.run([*command, "bad.json", "-o", "o.json"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 1 and "bad.json is not a trace" in bad.stderr and "Traceback" not in bad.stderr
    good = subprocess.run(
        [*command, "array.json", "-o", "o.json"], cwd=tmp_path, capture_output=True, text=True
    )
    assert good.returncode == 0 and load(tmp_path / "o.json")[0]["name"] == "x"


def test_traced_echo_of_short_binary_messages_keeps_the_session(
    start_server: Callable[..., ServerProgram], tmp_path: Path
) -> None:
    """An empty or one-byte binary message, echoed with --trace on: no 1011, and the trace names each size."""
    server_trace = tmp_path / "server.json"
    server = start_server("--echo", "--count", "0", "--trace", str(server_trace))
    with connect(server.url) as ws:
        for message in (b"", b"\x01", b"\x81\x05hello", b"fine"):
            ws.send(message)
            assert ws.recv(timeout=5) == message
    server.signal(signal.SIGINT)
    assert server.wait() == 0
    assert "Traceback" not in server.output() and "1011" not in server.output()
    sent = [e["args"] for e in in_lane(load(server_trace), "conn-1-reader", "sent message")]
    assert [a["size"] for a in sent] == [0, 1, 7, 4]


def test_a_ring_just_full_has_dropped_nothing(tmp_path: Path) -> None:
    trace.start(tmp_path / "full.json", max_events=10)
    for n in range(10):
        trace.instant("tick", n=n)
    written = trace.stop()
    assert written is not None and written.events == 10 and not written.full
    assert "dropped" not in written.summary()


@pytest.mark.slow
def test_merge_and_trace_mistakes_are_one_line(tmp_path: Path) -> None:
    """A file nested too deep for the JSON parser, one input, an empty --trace: a line each."""
    (tmp_path / "a.json").write_text('{"traceEvents": []}')
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    command = [sys.executable, "-m", "wsthreads", "merge-traces"]
    options: dict[str, Any] = {"cwd": tmp_path, "capture_output": True, "text": True, "timeout": 30}
    deep = subprocess.run([*command, "a.json", "deep.json", "-o", "r.json"], **options)
    assert deep.returncode == 1
    assert deep.stderr == (
        "python -m wsthreads: error: cannot merge the traces: deep.json is not a trace (nested too deep)\n"
    )
    one = subprocess.run([*command, "a.json", "-o", "r.json"], **options)
    assert (
        one.stdout == "merged 1 trace into r.json: 0 events; open it in ui.perfetto.dev or chrome://tracing\n"
    )
    empty = run_client("--trace", "", "--url", "ws://127.0.0.1:9/ws")
    assert (empty.returncode, empty.stderr) == (2, "sync_client.py: error: --trace needs a file name\n")
