"""The closing handshake's state machine (wsthreads.closing), without sockets or threads."""

from __future__ import annotations

import json
import logging
import random

import pytest

from wsthreads.closing import RETRYABLE_CODES, CloseCode, Closed, Closing, State, describe_close

TIMEOUT = 1.0


def state(closing: Closing) -> State:
    """The state now (a call, so that a type checker does not carry an earlier assert's narrowing)."""
    return closing.state


def closed(c: Closed | None) -> tuple[int, str, bool] | None:
    return None if c is None else (c.code, c.reason, c.by_peer)


def test_we_close_first_and_the_peer_answers() -> None:
    closing = Closing(TIMEOUT)
    closing.request(CloseCode.GOING_AWAY, "bye", now=10.0)
    assert closing.close_due() == (CloseCode.GOING_AWAY, "bye")
    assert closing.start_deadline(now=10.2) == 11.0  # from the request, not from the frame
    assert closing.frame_out(CloseCode.GOING_AWAY, "bye")
    assert state(closing) is State.CLOSING and closing.close_due() is None
    outcome = closing.received(CloseCode.GOING_AWAY, "")
    assert closed(outcome) == (CloseCode.GOING_AWAY, "bye", False)  # ours, answered
    assert not closing.must_answer
    closing.settle(outcome, now=10.5)
    assert state(closing) is State.ENDING and closing.deadline == 11.0  # the wind-down keeps the deadline
    closing.end()
    assert state(closing) is State.OVER and closing.outcome is outcome


def test_the_peer_closes_first_and_we_answer_with_its_code() -> None:
    closing = Closing(TIMEOUT)
    outcome = closing.received(4000, "done")
    assert closed(outcome) == (4000, "done", True)
    assert closing.must_answer
    assert closing.start_deadline(now=5.0) == 6.0  # nobody asked: the timeout runs from the answer
    assert closing.frame_out(4000, "")
    assert not closing.must_answer and closing.ours is None  # our frame answered: it is not "ours first"
    closing.settle(outcome, now=5.1)
    assert closing.deadline == 6.0


def test_a_close_asked_for_but_overtaken_by_the_peers_close_is_answered_with_the_peers_code() -> None:
    closing = Closing(TIMEOUT)
    closing.request(CloseCode.NORMAL_CLOSURE, "mine", now=0.0)
    outcome = closing.received(CloseCode.GOING_AWAY, "theirs")
    assert closing.must_answer and closed(outcome) == (CloseCode.GOING_AWAY, "theirs", True)


def test_only_the_first_request_counts_and_it_is_made_sendable() -> None:
    closing = Closing(TIMEOUT)
    closing.request(CloseCode.ABNORMAL_CLOSURE, "x" * 200, now=1.0)
    closing.request(CloseCode.PROTOCOL_ERROR, "later", now=2.0)
    code, reason = closing.close_due() or (0, "")
    assert code == CloseCode.NORMAL_CLOSURE  # 1006 never goes on the wire
    assert len(reason.encode()) == 123
    assert closing.requested_by == 2.0 - 1.0 + TIMEOUT


def test_one_close_frame_at_most() -> None:
    closing = Closing(TIMEOUT)
    assert closing.frame_out(CloseCode.PROTOCOL_ERROR, "bad")
    assert not closing.frame_out(CloseCode.NORMAL_CLOSURE, "again")
    assert closed(closing.ours) == (CloseCode.PROTOCOL_ERROR, "bad", False)


def test_writes_are_refused_by_state() -> None:
    closing = Closing(TIMEOUT)
    assert closing.write_refusal(queued=False) is None
    closing.request(CloseCode.NORMAL_CLOSURE, "done", now=0.0)
    # A new message may not go (it raises our close); one queued before the request still may,
    # up to the close frame.
    assert closed(closing.write_refusal(queued=False)) == (CloseCode.NORMAL_CLOSURE, "done", False)
    assert closing.write_refusal(queued=True) is None
    closing.frame_out(
        CloseCode.PROTOCOL_ERROR, "bad frame"
    )  # the reader's close went first: it is the one out
    assert closed(closing.write_refusal(queued=True)) == (CloseCode.PROTOCOL_ERROR, "bad frame", False)
    assert closed(closing.write_refusal(queued=False)) == (CloseCode.PROTOCOL_ERROR, "bad frame", False)


def test_writes_after_the_peers_close_raise_the_peers_code() -> None:
    closing = Closing(TIMEOUT)
    closing.received(4001, "gone")
    assert closed(closing.write_refusal(queued=True)) == (4001, "gone", True)


def test_a_cut_refuses_writes_with_the_first_reason_given() -> None:
    closing = Closing(TIMEOUT)
    closing.cut("the peer is not reading")
    closing.cut()
    closing.cut("later")
    assert closed(closing.write_refusal(queued=True)) == (
        CloseCode.ABNORMAL_CLOSURE,
        "the peer is not reading",
        False,
    )
    assert closed(closing.lost("EOF")) == (CloseCode.ABNORMAL_CLOSURE, "the peer is not reading", True)


def test_over_refuses_writes_with_how_it_ended() -> None:
    closing = Closing(TIMEOUT)
    closing.end(Closed(CloseCode.ABNORMAL_CLOSURE, "EOF"))
    assert closed(closing.write_refusal(queued=True)) == (CloseCode.ABNORMAL_CLOSURE, "EOF", True)


@pytest.mark.parametrize(
    ("frame_went", "why_cut", "expected"),
    [
        (False, "", (CloseCode.ABNORMAL_CLOSURE, "the closing handshake timed out", True)),
        (True, "", (CloseCode.NORMAL_CLOSURE, "bye", False)),  # only the answer is missing: our close stands
        (True, "a write took over 10 s", (CloseCode.ABNORMAL_CLOSURE, "a write took over 10 s", True)),
    ],
)
def test_a_timed_out_close(frame_went: bool, why_cut: str, expected: tuple[int, str, bool]) -> None:
    closing = Closing(TIMEOUT)
    closing.request(CloseCode.NORMAL_CLOSURE, "bye", now=0.0)
    if frame_went:
        closing.frame_out(CloseCode.NORMAL_CLOSURE, "bye")
    if why_cut:
        closing.cut(why_cut)
    assert closed(closing.timed_out()) == expected


def test_a_protocol_failure_ends_with_our_close() -> None:
    closing = Closing(TIMEOUT)
    assert closed(closing.failed(CloseCode.PROTOCOL_ERROR, "bad opcode")) == (
        CloseCode.PROTOCOL_ERROR,
        "bad opcode",
        False,
    )
    closing.request(CloseCode.GOING_AWAY, "shutdown", now=0.0)
    closing.frame_out(CloseCode.GOING_AWAY, "shutdown")
    # Our close went first, then the peer broke a rule: the session ended with ours.
    assert closed(closing.failed(CloseCode.PROTOCOL_ERROR, "bad opcode")) == (
        CloseCode.GOING_AWAY,
        "shutdown",
        False,
    )


def test_random_walks_keep_the_invariants() -> None:
    """Any order of events: states only go forward, one close frame, and a first close is ours or theirs."""
    rng = random.Random(7)
    for _ in range(2000):
        closing = Closing(TIMEOUT)
        frames_out = 0
        previous = closing.state
        now = 0.0
        for _ in range(8):
            now += rng.random()
            event = rng.choice(["request", "cut", "frame", "received", "settle", "end", "due"])
            if closing.state is State.OVER:
                break
            if event == "request":
                closing.request(CloseCode.NORMAL_CLOSURE, "", now)
            elif event == "cut":
                closing.cut("why")
            elif event == "frame" and closing.state < State.ENDING:
                closing.start_deadline(now)
                frames_out += closing.frame_out(CloseCode.NORMAL_CLOSURE, "")
            elif event == "received" and closing.state < State.ENDING:
                closing.settle(closing.received(CloseCode.GOING_AWAY, ""), now)
            elif event == "settle" and closing.state < State.ENDING:
                closing.settle(closing.failed(CloseCode.PROTOCOL_ERROR, ""), now)
            elif event == "end":
                closing.end(closing.lost("EOF") if closing.outcome is None else None)
            elif event == "due" and closing.close_due() is not None:
                assert closing.state is State.OPEN
            assert closing.state >= previous
            previous = closing.state
            assert frames_out <= 1
            assert closing.ours is None or closing.peers is None
            if closing.state >= State.ENDING:
                assert closing.outcome is not None
            if closing.state is State.ENDING:
                assert closing.deadline is not None
            if closing.state is not State.OPEN:
                assert closing.write_refusal(queued=True) is not None


def test_a_close_code_reads_as_its_number_on_every_python() -> None:
    """str() and format() of a CloseCode give the number (Python 3.10's IntEnum gave the name);
    describe_close names it; the codes a client retries after are among them."""
    code = CloseCode.GOING_AWAY
    shown = (str(code), f"{code}", f"{code:>5}", f"{code:5}", f"{code:d}", f"{code:06}", f"{code:x}")
    assert shown == ("1001", "1001", " 1001", " 1001", "1001", "001001", "3e9")
    assert json.dumps([code]) == "[1001]"
    assert logging.makeLogRecord({"msg": "closed: %s", "args": (code,)}).getMessage() == "closed: 1001"
    assert describe_close(code, "bye") == "1001 (going away) 'bye'"
    assert describe_close(4000) == "4000 (application code)" and describe_close(1004) == "1004 (unknown)"
    closed = Closed(CloseCode.TRY_AGAIN_LATER)
    assert str(closed) == "1013 (try again later)" and type(closed.code) is int and closed.code == 1013
    assert CloseCode.SERVICE_RESTART in RETRYABLE_CODES and CloseCode.PROTOCOL_ERROR not in RETRYABLE_CODES
    assert CloseCode(1014) is CloseCode.BAD_GATEWAY
