"""The body buffer both sides use: the sender is paused once past the high mark and resumed
once a read leaves no more than the low one."""

from __future__ import annotations

from shield.http.body_buffer import BodyBuffer


def buffer_and_calls() -> tuple[BodyBuffer, list[str]]:
    calls: list[str] = []
    buffer = BodyBuffer(
        high_water=10, low_water=4, pause=lambda: calls.append("pause"), resume=lambda: calls.append("resume")
    )
    return buffer, calls


def test_a_fast_sender_is_paused_once_and_resumed_when_the_reader_caught_up() -> None:
    buffer, calls = buffer_and_calls()
    for _ in range(5):
        buffer.add(b"abc")  # 15 bytes: past 10 at the fourth piece
    assert calls == ["pause"]
    assert buffer.take() == b"abc" and buffer.take() == b"abc" and calls == ["pause"]  # 9 left
    assert buffer.take(2) == b"ab"  # 7 left
    assert calls == ["pause"]
    assert buffer.take() == b"c" and buffer.take() == b"abc"  # 3 left: at most the low mark
    assert calls == ["pause", "resume"]
    assert buffer.take_all() == b"abc" and buffer.size == 0


def test_what_nobody_will_read_is_dropped_and_the_sender_let_go() -> None:
    buffer, calls = buffer_and_calls()
    buffer.add(b"x" * 11)
    buffer.clear()
    assert (buffer.size, calls) == (0, ["pause", "resume"])
    assert buffer.take_all() == b""
