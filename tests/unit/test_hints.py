"""Core errors name no flag; the command line and the daemon each word their facts.

The same error reaches ``heapspy attach`` (flags) and a daemon session (config keys): the
remedies it carries are worded by ``heapspy/cli/hints.py`` and ``heapspy/daemon/hints.py``;
``str()`` of the error names neither.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from heapspy.cli import hints as cli_hints
from heapspy.daemon import hints as daemon_hints
from heapspy.daemon.config import load_config
from heapspy.errors import AgentTimeout, InjectionFailed, Remedy, RemedyKind, Setting, UsageError

ALL_REMEDIES = [
    Remedy(kind, thread=thread, nudge=nudge)
    for kind in typing.get_args(RemedyKind)
    for thread in (None, 4250)
    for nudge in (True, False)
]
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def test_timeout_advice_in_each_front_ends_words() -> None:
    exc = AgentTimeout(
        "The agent did not start in process 4242 within 10 s: its main thread is waiting on "
        "a futex.",
        hint="The request runs when the chosen thread next executes Python bytecode.",
        remedies=(Remedy("thread", thread=4250), Remedy("ptrace_wakes_lock", nudge=False)),
    )
    first, cli = cli_hints.render(exc).split("\n")
    assert first == exc.message
    assert cli == (
        "The request runs when the chosen thread next executes Python bytecode. "
        "Thread 4250 is running Python: try --thread 4250. Its main thread waits on a lock: "
        "--method ptrace without --no-nudge wakes such a wait harmlessly so that the agent "
        "starts."
    )
    daemon = daemon_hints.render(exc).split("\n")[1]
    assert "Thread 4250 is running Python." in daemon
    assert 'method = "ptrace" with nudge = true wakes such a wait' in daemon
    assert not FLAG.search(daemon) and not FLAG.search(str(exc))
    assert exc.exit_code == 11  # the code stays the error's own, for every front end


def test_subject_is_worded_by_the_front_end() -> None:
    exc = UsageError(
        "needs Python 3.14+; process 7 runs 3.12.", subject=Setting("method", "pep768")
    )
    assert cli_hints.render(exc) == "--method pep768 needs Python 3.14+; process 7 runs 3.12."
    assert daemon_hints.render(exc) == 'method = "pep768" needs Python 3.14+; process 7 runs 3.12.'
    assert exc.message == str(exc) == "method pep768 needs Python 3.14+; process 7 runs 3.12."
    thread = UsageError("needs a Python 3.14+ target.", subject=Setting("thread"))
    assert cli_hints.render(thread) == "--thread needs a Python 3.14+ target."


@pytest.mark.parametrize("remedy", ALL_REMEDIES, ids=repr)
def test_every_remedy_is_worded_everywhere(remedy: Remedy) -> None:
    exc = InjectionFailed("Something went wrong.", remedies=(remedy,))
    cli = cli_hints.render(exc)
    assert FLAG.search(cli), cli  # the command line always offers a flag
    for text in (str(exc), daemon_hints.render(exc)):
        assert not FLAG.search(text), text


def test_no_advice_no_second_line() -> None:
    exc = InjectionFailed("Plain.", remedies=(Remedy("thread"),))
    assert daemon_hints.render(exc) == "Plain."  # the daemon has no key for a thread
    assert str(InjectionFailed("Plain.")) == "Plain."


def test_daemon_config_errors_name_keys(tmp_path: Path) -> None:
    """A check shared with the command line, reached from the daemon's file: its advice
    is in the file's words."""
    path = tmp_path / "heapspy.toml"
    path.write_text('[daemon]\nlisten = "9465"\n[[watch]]\nname = "api"\ncmdline = "gunicorn"\n')
    with pytest.raises(UsageError) as info:
        load_config(path)
    text = cli_hints.render(info.value)  # as `heapspy daemon --check` prints it
    assert 'key "listen"' in text and 'For example listen = "127.0.0.1:9465"' in text, text
    assert not FLAG.search(text), text
