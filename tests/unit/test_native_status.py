"""`heapspy status`'s lines about native mode, from what the agent sent (checked by the
schema, still the target's text: printed escaped)."""

from __future__ import annotations

from heapspy.reporters.status import NO_ALLOCATOR, _native_lines


def test_native_lines_list_redirected_and_skipped_libraries() -> None:
    native = {
        "redirected": ["/usr/lib/libz.so.1", "/srv/app/\x1b]0;evil\x07.so"],
        "skipped": [
            ["/usr/lib/libc.so.6", "the C library itself"],
            ["/srv/app/_speedups.so", NO_ALLOCATOR],
            ["/srv/app/_other.so", NO_ALLOCATOR],
        ],
        "more": 0,
        "notes": ["malloc is interposed by /usr/lib/libjemalloc.so.2 (another allocator)"],
    }
    lines = _native_lines(42, native)
    assert lines[0] == "42: native allocations: 2 libraries redirected, 3 skipped"
    assert "42:   redirected /usr/lib/libz.so.1" in lines
    assert all("\x1b" not in line and "\x07" not in line for line in lines)
    assert "42:   skipped /usr/lib/libc.so.6: the C library itself" in lines
    assert not any("_speedups" in line for line in lines)  # counted, not listed
    assert "42:   2 more call no allocator function (--format json)" in lines
    assert lines[-1].startswith("42:   note: malloc is interposed")


def test_no_native_lines_without_native_mode() -> None:
    assert _native_lines(42, None) == []
