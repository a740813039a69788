"""Dump rules: parsed up front with precise errors, fired with cooldowns."""

from __future__ import annotations

import pytest

from heapspy.errors import UsageError
from heapspy.rules import GRAMMAR, Observation, Offender, RuleEngine, parse_rule

MiB = 1024 * 1024


def test_parses_every_form() -> None:
    assert parse_rule("rss>1.5GiB").size == int(1.5 * 1024**3)
    r = parse_rule("growth>100MiB/10m,cooldown=30m")
    assert (r.kind, r.size, r.window, r.cooldown) == ("growth", 100 * MiB, 600, 1800)
    assert parse_rule("heap-growth>5MiB/5s").kind == "heap-growth"
    assert parse_rule("every 15m").window == 900
    assert parse_rule("leak").intervals == 5 and parse_rule("leak:3").intervals == 3
    assert parse_rule("rss>1GiB").name == "rss>1GiB"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("rss>lots", "Invalid rss threshold 'lots'"),
        ("rss<1GiB", "not a rule heapspy knows"),
        ("growth>5MiB", "not a rule heapspy knows"),
        ("growth>5MiB/soon", "Invalid growth window 'soon'"),
        ("every 0s", "at least 1s"),
        ("leak:1", "at least 2 intervals"),
        ("rss>1GiB,often=1", "unknown option"),
    ],
)
def test_errors_say_what_is_wrong_and_show_grammar(text: str, why: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_rule(text)
    assert why in info.value.message
    assert repr(text) in info.value.message
    assert info.value.hint == GRAMMAR


def test_threshold_fires_once_per_cooldown() -> None:
    engine = RuleEngine([parse_rule("rss>100MiB,cooldown=10s")], start=0)
    fired = [bool(engine.observe(Observation(t, 200 * MiB, 0))) for t in range(0, 25)]
    assert [t for t, f in enumerate(fired) if f] == [0, 10, 20]
    assert not engine.observe(Observation(30, 50 * MiB, 0))


def test_growth_within_window() -> None:
    engine = RuleEngine([parse_rule("growth>5MiB/5s,cooldown=100s")], start=0)
    assert not engine.observe(Observation(0, 10 * MiB, 0))
    assert not engine.observe(Observation(3, 14 * MiB, 0))
    assert engine.observe(Observation(4, 16 * MiB, 0))  # +6 MiB within 5 s
    slow = RuleEngine([parse_rule("growth>5MiB/5s")], start=0)
    fired = [slow.observe(Observation(t, (10 + t) * MiB, 0)) for t in range(0, 30, 2)]
    assert not any(fired)  # 1 MiB/s never makes 5 MiB inside 5 s


def test_every_and_leak() -> None:
    engine = RuleEngine([parse_rule("every 10s"), parse_rule("leak:3")], start=0)
    kinds = [[r.kind for r in engine.observe(Observation(t, 0, 0), (1, 1, 0))] for t in range(21)]
    assert [t for t, k in enumerate(kinds) if "every" in k] == [10, 20]
    assert not any("leak" in k for k in kinds)
    assert [r.kind for r in engine.observe(Observation(22, 0, 0), (2, 1, 1))] == ["leak"]


def test_thread_and_task_rules_parse_with_their_options() -> None:
    r = parse_rule("thread-growth>50/10m,cooldown=1m,action=log")
    assert (r.kind, r.count, r.window, r.cooldown, r.action) == (
        "thread-growth",
        50,
        600,
        60,
        "log",
    )
    assert r.name == "thread-growth>50/10m" and r.wants_stacks
    assert parse_rule("tasks>10000").count == 10000 and parse_rule("threads>8").kind == "threads"
    assert parse_rule("rss>1GiB,action=log").action == "log"
    assert not parse_rule("rss>1GiB").wants_stacks
    for bad, why in (
        ("task-growth>0/1m", "must be positive"),
        ("threads>many", "not a rule heapspy knows"),
        ("tasks>5,action=page", "unknown option"),
    ):
        with pytest.raises(UsageError, match=why):
            parse_rule(bad)


def test_count_growth_fires_past_the_window_low_and_says_what_it_saw() -> None:
    growth = parse_rule("thread-growth>20/1m")
    engine = RuleEngine([growth, parse_rule("tasks>80")], start=0)

    def obs(t: float, threads: int, tasks: int) -> Observation:
        return Observation(t, None, 0, threads=threads, tasks=tasks)

    assert not engine.observe(obs(0, 3, 1))
    assert not engine.observe(obs(10, 23, 50))  # +20 is not more than 20
    fired = engine.observe(obs(20, 24, 81))
    assert [r.text for r in fired] == ["thread-growth>20/1m", "tasks>80"]
    assert engine.explain(growth, obs(20, 24, 81)) == "24 threads (+21 within 60s)"
    slow = RuleEngine([growth], start=0)
    assert not any(slow.observe(obs(t, 3 + t // 10, 0)) for t in range(0, 600, 10))


def test_limit_rules_parse() -> None:
    r = parse_rule("task-alloc>200MiB")
    assert (r.kind, r.size, r.is_limit, r.wants_stacks) == ("task-alloc", 200 * MiB, True, False)
    assert parse_rule("task-live>100MiB,action=log").action == "log"
    r = parse_rule("thread-alloc>1GiB/1m")
    assert (r.kind, r.size, r.window) == ("thread-alloc", 1024 * MiB, 60)
    with pytest.raises(UsageError, match="must be positive"):
        parse_rule("task-alloc>0")
    with pytest.raises(UsageError, match="not a rule heapspy knows"):
        parse_rule("thread-alloc>1GiB")


def test_task_alloc_fires_once_per_task_naming_it() -> None:
    rule = parse_rule("task-alloc>200MiB,cooldown=1s")
    engine = RuleEngine([rule], start=0)

    def obs(t: float, **alloc: float) -> Observation:
        tasks = tuple(Offender(name, mib * MiB, 0.05) for name, mib in alloc.items())
        return Observation(t, None, 0, task_alloc=tasks)

    assert not engine.observe(obs(0, bulk=150, small=1))
    assert engine.observe(obs(1, bulk=300, small=1)) == [rule]
    (bulk,) = engine.offenders[rule]
    assert bulk.name == "bulk"
    assert bulk.describe(rule) == "task 'bulk' allocated 300.0 MiB (±5%, sampled) since it started"
    # it only grows: never again for the same task, whatever the cooldown
    assert not any(engine.observe(obs(t, bulk=400, small=1)) for t in range(2, 20))
    assert engine.observe(obs(20, bulk=400, other=201, third=250)) == [rule]
    assert [o.name for o in engine.offenders[rule]] == ["third", "other"]  # largest first


def test_task_live_fires_again_after_its_cooldown() -> None:
    rule = parse_rule("task-live>100MiB,cooldown=10s")
    engine = RuleEngine([rule], start=0)
    live = (Offender("cache", 120 * MiB, 0.1),)
    fired = [t for t in range(25) if engine.observe(Observation(t, None, 0, task_live=live))]
    assert fired == [0, 10, 20]


def test_thread_alloc_is_a_rate_per_thread() -> None:
    rule = parse_rule("thread-alloc>100MiB/10s,cooldown=1h")
    engine = RuleEngine([rule], start=0)

    def obs(t: float, busy: float, calm: float) -> Observation:
        threads = (Offender("busy (tid 7)", busy * MiB), Offender("calm (tid 8)", calm * MiB))
        return Observation(t, None, 0, thread_alloc=threads)

    # calm allocates 8 MiB/s (80 MiB per 10 s) for a minute: never more than 100 MiB in 10 s
    assert not any(engine.observe(obs(t, 0, 8 * t)) for t in range(0, 60, 2))
    assert engine.observe(obs(60, 120, 480)) == [rule]  # busy: 120 MiB within 10 s
    (busy,) = engine.offenders[rule]
    assert busy.name == "busy (tid 7)" and busy.value == 120 * MiB and busy.error is None
    assert busy.describe(rule) == "thread busy (tid 7) allocated 120.0 MiB within 10s"
