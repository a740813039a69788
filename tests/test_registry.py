"""One session per target: a second claim names the holder."""

from __future__ import annotations

import os

import pytest

from heapspy import control
from heapspy.errors import AlreadyAttached, NoSession
from heapspy.registry import SessionLock, read_holder


def test_second_claim_names_holder() -> None:
    first = SessionLock(12345)
    first.acquire()
    try:
        holder = read_holder(12345)
        assert holder is not None and holder.holder_pid == os.getpid()
        with pytest.raises(AlreadyAttached, match=f"held by pid {os.getpid()}"):
            SessionLock(12345).acquire()
    finally:
        first.release()
    again = SessionLock(12345)
    again.acquire()
    again.release()


def test_control_without_session() -> None:
    with pytest.raises(NoSession, match="No heapspy session holds process 999999"):
        control.request(999999, "status")
