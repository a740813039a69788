"""The wire protocol's frame layer and schema, alone: what heapspy accepts from an agent
(which runs in a process heapspy does not trust), fuzzed, and what the agent builds."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from heapspy_agent import protocol, schema
from heapspy_agent.protocol import FrameReader, ProtocolError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heapspy.aggregate import MAX_SITES, Aggregator
from heapspy.inject.boot_script import boot_source
from heapspy.printable import printable
from heapspy.reporters.status import SessionStatus, render_text
from heapspy.sampling import Sampling

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _frame(kind: int, payload: bytes) -> bytes:
    return protocol.HEADER.pack(len(payload), kind) + payload


def _samples(n_stacks: int = 2, depth: int = 3, name: str = "f") -> dict[str, Any]:
    stacks = [
        {"id": i + 1, "frames": [[f"{name}{i}_{d}", "/app/m.py", d + 1] for d in range(depth)]}
        for i in range(n_stacks)
    ]
    values = {str(i + 1): [1, 100] for i in range(n_stacks)}
    return {
        "seq": 1,
        "stacks": stacks,
        "inuse": values,
        "alloc": dict(values),
        "est": {k: [1.0, 100.0, 1.0, 100.0] for k in values},
        "totals": {"allocated_bytes": 5, "allocations": 1, "size_classes": [[3, 1]]},
        "facts": {"gc_counts": [1, 2, 3], "threads": 2, "collect_cpu": 0.001, "interval": 1.0},
    }


# --- the frame layer ------------------------------------------------------------------
def test_a_200k_deep_frame_is_refused_before_parsing() -> None:
    payload = b"[" * 200_000 + b"]" * 200_000
    with pytest.raises(ProtocolError, match="nested deeper"):
        FrameReader().feed(_frame(protocol.SAMPLES, payload))
    deep_object = b'{"a":' * 50 + b"1" + b"}" * 50
    with pytest.raises(ProtocolError, match="nested deeper"):
        protocol.decode(deep_object)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    body = {"reason": '[[[[[[[[[[[[[{{{{{{{{{{ \\" ]]]'}
    assert protocol.decode(json.dumps(body).encode()) == body


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"{", "unbalanced"),
        (b"[" * 100_000, "unbalanced"),
        (b'{"a" 1}', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"a": NaN}', "not JSON"),
        (b'{"a": -Infinity}', "not JSON"),
    ],
)
def test_malformed_payloads_are_protocol_errors(payload: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        FrameReader().feed(_frame(protocol.BYE, payload))


def test_a_length_header_past_the_limit_is_refused_before_reading() -> None:
    reader = FrameReader()
    with pytest.raises(ProtocolError, match="too large"):
        reader.feed(protocol.HEADER.pack(0xFFFFFFFF, protocol.SAMPLES))
    assert protocol.MAX_FRAME <= 8 * 1024 * 1024


def test_good_frames_before_a_broken_one_are_kept_and_the_error_follows() -> None:
    reader = FrameReader()
    data = protocol.encode(protocol.HEARTBEAT, {}) + _frame(protocol.BYE, b"{oops")
    assert reader.feed(data) == [(protocol.HEARTBEAT, {})]
    assert isinstance(reader.error, ProtocolError)
    with pytest.raises(ProtocolError):
        reader.feed(protocol.encode(protocol.HEARTBEAT, {}))


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_fuzz_any_bytes_give_frames_or_a_protocol_error(chunks: list[bytes]) -> None:
    reader = FrameReader(max_frame=1024)
    try:
        for chunk in chunks:
            for kind, body in reader.feed(chunk):
                assert isinstance(body, dict)
                try:
                    schema.check(kind, body)
                except ProtocolError:
                    pass
    except ProtocolError:
        pass


@FUZZ
@given(
    st.integers(0, 255),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=30,
    ),
)
def test_fuzz_any_json_value_is_checked_or_refused(kind: int, value: Any) -> None:
    try:
        payload = json.dumps(value).encode()
    except ValueError:
        return
    try:
        body = protocol.decode(payload)
        checked = schema.check(kind, body)
    except ProtocolError:
        return
    assert kind in schema.FROM_AGENT
    assert set(checked) <= set(schema.messages()[kind].fields)


_KEYS = ["stacks", "inuse", "alloc", "est", "totals", "facts", "seq", "dropped"]
_BAD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
)


@FUZZ
@given(st.sampled_from(_KEYS), st.lists(st.integers(0, 3), max_size=4), _BAD)
def test_fuzz_a_mutated_samples_frame_is_checked_then_folds_without_error(
    key: str, path: list[int], bad: Any
) -> None:
    """Replace one part of a valid SAMPLES body: heapspy either refuses the frame or
    folds it in; nothing else (no TypeError, KeyError...) can come out."""
    body = _samples()
    body["dropped"] = 0
    parent: Any = body
    slot: Any = key
    node: Any = body[key]
    for step in path:
        if isinstance(node, list) and node:
            parent, slot, node = node, step % len(node), node[step % len(node)]
        elif isinstance(node, dict) and node:
            k = sorted(node)[step % len(node)]
            parent, slot, node = node, k, node[k]
        else:
            break
    parent[slot] = bad
    try:
        checked = schema.check(protocol.SAMPLES, protocol.decode(json.dumps(body).encode()))
    except ProtocolError:
        return
    agg = Aggregator(Sampling("sampled", 512 * 1024))
    agg.apply(checked)
    agg.profile()
    agg.top_sites(5)
    agg.alloc_totals()


# --- the schema -------------------------------------------------------------------------
def test_what_the_agent_sends_passes_the_schema() -> None:
    for kind, body in schema.fit_samples(_samples()):
        assert schema.check(kind, protocol.decode(protocol.encode(kind, body)[5:])) == body


@pytest.mark.parametrize(
    ("kind", "body", "match"),
    [
        (protocol.SAMPLES, {"seq": "1"}, "expected an integer"),
        (protocol.SAMPLES, {"seq": True}, "expected an integer"),
        (protocol.SAMPLES, {"seq": 2**64}, "out of range"),
        (protocol.SAMPLES, {}, "seq is missing"),
        (protocol.SAMPLES, {"seq": 1, "inuse": {"x1": [1, 2]}}, "not a stack id"),
        (protocol.SAMPLES, {"seq": 1, "inuse": {"1": [1]}}, "list of 2 items"),
        (protocol.SAMPLES, {"seq": 1, "est": {"1": [1, 2, 3, 1e300]}}, "out of range"),
        # a tuple of plain numbers is checked in one loop: the same refusals as one by one
        (
            protocol.SAMPLES,
            {"seq": 1, "inuse": {"1": [True, 2]}},
            r"inuse\[1\]\[0\]: expected an integer",
        ),
        (
            protocol.SAMPLES,
            {"seq": 1, "alloc": {"1": [1, 2.0]}},
            r"alloc\[1\]\[1\]: expected an integer",
        ),
        (protocol.SAMPLES, {"seq": 1, "inuse": {"1": [-1, 2]}}, "out of range"),
        (protocol.SAMPLES, {"seq": 1, "var": {"1": [0, 0, 0, float("nan")]}}, "out of range"),
        (protocol.SAMPLES, {"seq": 1, "est": {"1": [0, "1", 0, 0]}}, "expected a number"),
        (protocol.SAMPLES, {"seq": 1, "stacks": [{"id": 1}]}, "frames is missing"),
        (protocol.SAMPLES, {"seq": 1, "facts": {"interval": -1}}, "out of range"),
        (protocol.SAMPLES, {"seq": 1, "totals": {"numpy": 3}}, "expected a string"),
        (protocol.HELLO, {"version": 1}, "token is missing"),
        (protocol.HELLO, {"version": 1, "token": "t", "argv": ["x" * 5000]}, "at most 4096"),
        (protocol.READY, {"sampling": {"mode": "turbo", "rate": 1, "frames": 1}}, "not one of"),
        (protocol.READY, {"mode": "sampled"}, "sampling is missing"),
        (protocol.REPLY, {"ok": 1}, "true or false"),
        (99, {}, "unknown frame kind 99"),
        (protocol.WELCOME, {}, "unknown frame kind"),  # heapspy's own kinds never come back
    ],
)
def test_wrong_types_ranges_and_kinds_are_refused(kind: int, body: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        schema.check(kind, body)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"seq": 1, "totals": {"size_classes": [[0, 1], [3, -1]]}}, "totals.size_classes[1][1]"),
        ({"seq": 1, "inuse": {"7": [1, "2"]}}, "SAMPLES.inuse[7][1]"),
        (
            {"seq": 1, "stacks": [{"id": 1, "frames": [["f", "m.py", 1], ["g", 2, 3]]}]},
            "SAMPLES.stacks[0].frames[1][1]",
        ),
        ({"seq": 1, "facts": {"gc_counts": [1, 2, 1.5]}}, "facts.gc_counts[2]"),
    ],
)
def test_a_refusal_names_the_item_that_broke_it(body: Any, where: str) -> None:
    """The containers check their items without spelling out each one's path (a daemon
    checks every frame of every session), and still name the one that failed."""
    with pytest.raises(ProtocolError) as caught:
        schema.check(protocol.SAMPLES, body)
    assert where in str(caught.value), str(caught.value)


def test_bounded_counts_are_refused_past_their_limit() -> None:
    long_stack = {"id": 1, "frames": [["f", "m.py", 1]] * (schema.MAX_FRAMES_PER_STACK + 1)}
    with pytest.raises(ProtocolError, match="at most 512"):
        schema.check(protocol.SAMPLES, {"seq": 1, "stacks": [long_stack]})
    many = [{"id": i, "frames": []} for i in range(schema.MAX_STACKS_PER_FRAME + 1)]
    with pytest.raises(ProtocolError, match="items"):
        schema.check(protocol.STACKS, {"stacks": many})
    with pytest.raises(ProtocolError, match="characters"):
        schema.check(protocol.BYE, {"reason": "x" * (schema.MAX_TEXT + 1)})


def test_keys_a_message_does_not_define_are_dropped() -> None:
    body = {"seq": 1, "junk": list(range(10)), "totals": {"allocations": 1, "extra": "x"}}
    assert schema.check(protocol.SAMPLES, body) == {"seq": 1, "totals": {"allocations": 1}}


def test_the_agent_splits_a_big_collection_into_frames_under_the_limit() -> None:
    body = _samples(n_stacks=3000, depth=64, name="x" * 200)
    frames = schema.fit_samples(body)
    assert [k for k, _ in frames[:-1]] == [protocol.STACKS] * (len(frames) - 1)
    assert len(frames) > 1 and frames[-1][0] == protocol.SAMPLES
    sent = 0
    for kind, part in frames:
        data = protocol.encode(kind, part)
        assert len(data) <= protocol.MAX_FRAME
        sent += len(schema.check(kind, protocol.decode(data[5:]))["stacks"])
    assert sent == 3000


def test_the_agent_clips_text_and_frames_to_the_limits() -> None:
    body = {"seq": 1, "stacks": [{"id": 7, "frames": [["f" * 5000, "p" * 9000, 1]] * 600}]}
    ((kind, part),) = schema.fit_samples(body)
    checked = schema.check(kind, part)
    frames = checked["stacks"][0]["frames"]
    assert len(frames) == schema.MAX_FRAMES_PER_STACK
    assert len(frames[0][0]) == schema.MAX_FUNCTION and len(frames[0][1]) == schema.MAX_TEXT


def test_the_bootstraps_error_report_speaks_this_protocol(tmp_path: Path) -> None:
    """boot_script.py writes its two frames by hand (it cannot import the agent it failed
    to import): its kinds, version and bodies must be the protocol's. It is run here for
    real, against a directory with no config, so its boot fails and it reports."""
    sock_path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(1)
    listener.settimeout(30)
    source = boot_source(str(tmp_path), "tok", sock_path)
    runner = threading.Thread(target=exec, args=(source, {"__builtins__": __builtins__}))
    runner.start()
    conn, _ = listener.accept()
    conn.settimeout(30)
    reader, pending = FrameReader(), []  # type: ignore[var-annotated]
    got = []
    while (msg := protocol.recv_one(conn, reader, pending)) is not None:
        got.append((msg[0], schema.check(*msg)))
    runner.join()
    listener.close()
    conn.close()
    assert [k for k, _ in got] == [protocol.HELLO, protocol.ERROR]
    assert got[0][1]["version"] == protocol.VERSION and got[0][1]["token"] == "tok"
    assert got[1][1]["code"] == "boot" and "config.json" in got[1][1]["message"]


# --- what heapspy keeps -----------------------------------------------------------------
def test_the_aggregator_keeps_a_bounded_table_and_counts_what_it_drops() -> None:
    agg = Aggregator(Sampling("sampled", 512 * 1024))
    stacks = [{"id": i, "frames": [["f", "m.py", i % 1000]]} for i in range(MAX_SITES + 500)]
    agg.add_stacks(stacks)
    agg.add_stacks(stacks[:10])  # a repeated id changes nothing
    assert len(agg.sites) == MAX_SITES
    assert agg.dropped_stacks == 500
    # every stack's frames are shared, not copied: 1000 distinct frames in all
    assert len({id(site.stack[0]) for site in agg.sites.values()}) == 1000


def test_status_says_how_many_stacks_a_session_dropped() -> None:
    status = {"python": "3.11.2", "mode": "sampled", "rate": 524288, "dropped_stacks": 1234}
    text = render_text([SessionStatus(4242, None, status)], now=0.0)
    assert "4242: 1234 stacks dropped, beyond the session's limits" in text
    quiet = render_text([SessionStatus(4242, None, {**status, "dropped_stacks": 0})], now=0.0)
    assert "dropped" not in quiet


def test_status_says_when_quiet_intervals_are_merged() -> None:
    status = {"python": "3.11.2", "mode": "sampled", "rate": 524288, "intervals": 1200,
              "reports": 130, "idle_report": 10.0}  # fmt: skip
    text = render_text([SessionStatus(4242, None, status)], now=0.0)
    assert (
        "4242: quiet intervals merged (idle_report 10s): 130 reports for 1,200 intervals; "
        "figures sent only with a report may be up to 10s old"
    ) in text
    for off in ({"idle_report": 0.0}, {"idle_report": None}, {"reports": "130"}):
        assert "quiet" not in render_text([SessionStatus(4242, None, {**status, **off})])


def test_printable_escapes_what_a_terminal_or_a_log_would_obey() -> None:
    assert printable("a\x1b]0;t\x07b\x1b[2J\nc\u202ed\x9b") == (
        "a\\x1b]0;t\\x07b\\x1b[2J\\nc\\u202ed\\x9b"
    )
    assert printable("row 1\nrow\t2\r", keep_newlines=True) == "row 1\nrow\\t2\\r"
    assert printable("plain: é, 中文, ±95%") == "plain: é, 中文, ±95%"
