"""The waker a session's loop waits on besides its sockets (heapspy.waker): a stop or
dump request made from another thread wakes the loop at once, not at its next frame."""

from __future__ import annotations

import threading

from heapspy.channel import readable
from heapspy.waker import Waker


def test_a_wake_from_another_thread_ends_a_long_wait() -> None:
    waker = Waker()
    try:
        assert readable([waker], 0) == []
        threading.Timer(0.05, waker.wake).start()
        assert readable([waker], 120) == [waker]  # not the timeout: that would be 2 min
        waker.wake()  # wakes pile up as one readable pipe...
        waker.drain()  # ...which drain empties
        assert readable([waker], 0) == []
    finally:
        waker.close()
    waker.wake()  # after the end: nothing, and no write to a descriptor reused since
    waker.drain()
    assert waker.fileno() == -1
