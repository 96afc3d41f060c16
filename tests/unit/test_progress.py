"""`tally worker --once`'s progress bar (app.cli.Progress): drawn in place on a terminal, silent on a
pipe (the e2e test of the command checks the pipe side on the real process)."""

from __future__ import annotations

import io

from app.cli import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_redrawn_in_place_and_a_last_newline() -> None:
    screen = Terminal()
    progress = Progress(screen, 4, what="subscriptions")
    for count in (0, 1, 4):
        progress.update(count)
    progress.done()
    frames = screen.getvalue().split("\r")[1:]
    assert frames == [
        "[" + "-" * 30 + "] 0/4 subscriptions",
        "[" + "#" * 7 + "-" * 23 + "] 1/4 subscriptions",
        "[" + "#" * 30 + "] 4/4 subscriptions\n",
    ]


def test_more_done_than_counted_at_the_start_fills_the_bar_without_overflowing() -> None:
    # Renewals due while the run goes on are claimed too: the count can pass the first total.
    screen = Terminal()
    progress = Progress(screen, 2, what="subscriptions")
    progress.update(3)
    assert screen.getvalue() == "\r[" + "#" * 30 + "] 3/3 subscriptions"


def test_nothing_due_draws_an_empty_bar_and_a_pipe_gets_nothing() -> None:
    screen = Terminal()
    Progress(screen, 0, what="subscriptions").update(0)
    assert screen.getvalue() == "\r[" + "-" * 30 + "] 0/1 subscriptions"
    pipe = io.StringIO()  # isatty() is False
    progress = Progress(pipe, 5, what="subscriptions")
    progress.update(2)
    progress.done()
    assert pipe.getvalue() == ""
