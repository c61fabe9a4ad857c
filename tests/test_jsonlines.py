"""The parent/child line protocol, both ends, over a real child process."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pgrid.jsonlines import ChildProcess, ProcessFailed

#: Deadline of one exchange with the child.
EXCHANGE_S = 30.0


async def test_commands_go_in_and_events_come_out(tmp_path: Path) -> None:
    child = await ChildProcess.spawn("echo", "tests.jsonlines_child", [], tmp_path / "echo.log")
    try:
        await child.expect("ready")
        await child.send("ping", n=1)
        assert await child.expect("echo") == {"event": "echo", "cmd": "ping", "n": 1}
        assert await child.stop(EXCHANGE_S) == 0
    finally:
        await child.kill()


async def test_a_gateway_s_lines_are_read_for_each_of_its_devices(tmp_path: Path) -> None:
    """``expect_each``: one line of the event per device, in any order, others
    skipped; a ``failed`` line of one of them ends the wait."""
    child = await ChildProcess.spawn("echo", "tests.jsonlines_child", [], tmp_path / "echo.log")
    try:
        await child.expect("ready")
        for event, name in [("done", "b"), ("digest", "a"), ("done", "c"), ("done", "a")]:
            await child.send("say", event=event, name=name, n=len(name))
        got = await child.expect_each("done", ["a", "b"])
        assert got == {n: {"event": "done", "name": n, "n": 1} for n in ("a", "b")}
        await child.send("say", event="failed", name="x", error="boom")  # not one of theirs
        await child.send("say", event="failed", name="b", error="boom")
        with pytest.raises(ProcessFailed, match=r"'failed', 'name': 'b'"):
            await child.expect_each("done", ["b"])
    finally:
        await child.kill()


async def test_a_malformed_command_is_an_error_event_and_the_child_goes_on(
    tmp_path: Path,
) -> None:
    child = await ChildProcess.spawn("echo", "tests.jsonlines_child", [], tmp_path / "echo.log")
    try:
        await child.expect("ready")
        assert child._proc.stdin is not None
        child._proc.stdin.write(b"not json\n[1, 2]\n")
        with pytest.raises(ProcessFailed, match="not a JSON command"):
            await child.expect("echo")
        with pytest.raises(ProcessFailed, match="'cmd' string"):
            await child.expect("echo")
        await child.send("still-here")
        assert (await child.expect("echo"))["cmd"] == "still-here"
    finally:
        await child.kill()


async def test_end_of_input_stops_the_child_and_end_of_output_is_reported(
    tmp_path: Path,
) -> None:
    child = await ChildProcess.spawn("echo", "tests.jsonlines_child", [], tmp_path / "echo.log")
    try:
        await child.expect("ready")
        assert child._proc.stdin is not None
        child._proc.stdin.close()  # the parent "died": end of input counts as stop
        await child.expect("stopped")
        with pytest.raises(ProcessFailed, match=r"exited \(0\)"):
            await child.next_event()
    finally:
        await child.kill()
