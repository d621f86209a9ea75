"""The rolling spending limits themselves (datasette_llm_core/limits.py), without a server."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from datasette.app import Datasette

from datasette_llm_core import limits
from datasette_llm_core import permissions as P
from datasette_llm_core.errors import ConfigError

T0 = 1_800_000_000.0


@pytest.fixture
def conn():
    c = sqlite3.connect(":memory:")
    limits._migration_usage(c)
    return c


def admit(conn, config, *, visitor="address:1.2.3.4", database="news", estimate=0.0, now=T0):
    return limits.admit_sync(conn, visitor=visitor, database=database,
                             limits=limits.parse_limits(config), estimate=estimate, ref=None, now=now)


def test_questions_per_minute_roll_over(conn):
    config = {"questions_per_minute": 2}
    assert admit(conn, config, now=T0).allowed
    assert admit(conn, config, now=T0 + 10).allowed
    refused = admit(conn, config, now=T0 + 20)
    assert not refused.allowed and refused.kind == "questions_per_minute"
    assert refused.retry_after == 40  # the first question leaves the minute at T0 + 60
    assert "2 questions in the last minute" in refused.message and "40 seconds" in refused.message
    assert admit(conn, config, now=T0 + 61).allowed  # rolling, not calendar minutes


def test_questions_per_hour(conn):
    config = {"questions_per_hour": 3}
    for i in range(3):
        assert admit(conn, config, now=T0 + i * 600).allowed
    refused = admit(conn, config, now=T0 + 1800)
    assert refused.kind == "questions_per_hour" and refused.retry_after == 1800
    assert "30 minutes" in refused.message


def test_dollars_per_day_counts_estimates_then_real_costs(conn):
    config = {"dollars_per_day": 0.10}
    first = admit(conn, config, estimate=0.06)
    assert first.allowed
    refused = admit(conn, config, estimate=0.06, now=T0 + 5)  # 0.12 > 0.10 with the estimate held
    assert refused.kind == "dollars_per_day"
    conn.execute("update llm_limit_usage set cost_usd = 0.02, settled = 1 where id = ?", [first.usage_id])
    assert admit(conn, config, estimate=0.06, now=T0 + 6).allowed  # the call cost less
    refused = admit(conn, config, estimate=0.06, now=T0 + 7)
    assert refused.kind == "dollars_per_day"
    assert refused.retry_after == 86400 - 1  # the 0.06 reserved at T0 + 6 must leave the window
    assert admit(conn, config, estimate=0.06, now=T0 + 86400 + 7).allowed


def test_dollars_per_month(conn):
    config = {"dollars_per_month": 1.0}
    for day in range(10):
        assert admit(conn, config, estimate=0.1, now=T0 + day * 86400).allowed
    refused = admit(conn, config, estimate=0.1, now=T0 + 10 * 86400)
    assert refused.kind == "dollars_per_month" and "a month" in refused.message


def test_visitors_and_databases_are_counted_apart_the_instance_together(conn):
    config = {"questions_per_minute": 1, "instance_dollars_per_day": 0.25}
    assert admit(conn, config, visitor="address:a", estimate=0.1).allowed
    assert not admit(conn, config, visitor="address:a", estimate=0.1).allowed
    assert admit(conn, config, visitor="address:a", database="other", estimate=0.1).allowed
    assert not admit(conn, config, visitor="actor:sam", estimate=0.1).allowed  # 0.3 > 0.25 overall
    refused = admit(conn, config, visitor="actor:sam", estimate=0.01)
    assert refused.allowed  # 0.21 fits
    refused = admit(conn, config, visitor="actor:kim", estimate=0.1)
    assert refused.kind == "instance_dollars_per_day" and "This site" in refused.message


def test_a_databases_own_values_replace_the_top_level_ones_key_by_key():
    config = limits.parse_limits({"questions_per_minute": 5, "dollars_per_day": 1.0,
                                  "databases": {"news": {"questions_per_minute": 1,
                                                         "dollars_per_day": None}}})
    news = config.for_database("news")
    assert (news.questions_per_minute, news.dollars_per_day) == (1, None)
    other = config.for_database("other")
    assert (other.questions_per_minute, other.dollars_per_day) == (5, 1.0)
    assert config.active and not limits.parse_limits({}).active


def test_bad_limits_config_says_where():
    with pytest.raises(ConfigError, match="limits: questions_per_minute"):
        limits.parse_limits({"questions_per_minute": -1})
    with pytest.raises(ConfigError, match="limits: databases.news.dolars_per_day"):
        limits.parse_limits({"databases": {"news": {"dolars_per_day": 1}}})


@pytest.mark.parametrize("header, hops, expected", [
    ("203.0.113.9", 0, "127.0.0.1"),  # not configured: the header is ignored
    ("203.0.113.9", 1, "203.0.113.9"),
    ("6.6.6.6, 203.0.113.9", 1, "203.0.113.9"),  # a forged entry on the left does not count
    ("6.6.6.6, 203.0.113.9, 10.0.0.1", 2, "203.0.113.9"),
    ("203.0.113.9", 2, "203.0.113.9"),  # fewer entries than proxies: the leftmost
    ("", 1, "127.0.0.1"),
])
def test_client_address(header, hops, expected):
    scope = {"client": ("127.0.0.1", 5000)}
    assert limits.client_address(scope, {"x-forwarded-for": header}, hops) == expected


def test_visitor_key():
    assert limits.visitor_key({"id": "sam"}, "1.2.3.4") == "actor:sam"
    assert limits.visitor_key(None, "1.2.3.4") == "address:1.2.3.4"


async def test_concurrent_questions_cannot_slip_past_a_limit_together():
    plugin = {"state_database": ":memory:", "limits": {"questions_per_minute": 3}}
    kwargs = {"config" if P.IS_V1 else "metadata": {"plugins": {"datasette-llm-newsroom": plugin}}}
    ds = Datasette([], **kwargs)
    await ds.invoke_startup()
    decisions = await asyncio.gather(*[
        limits.admit(ds, visitor="address:9.9.9.9", database="news", estimate=0.0, ref=None)
        for _ in range(20)])
    assert sum(d.allowed for d in decisions) == 3
    from datasette_llm_core.state import state_db

    db = await state_db(ds)
    usage = await db.execute_fn(lambda c: limits.usage_rows(c, limits.limits_for(ds)))
    (row,) = usage["visitors"]
    assert row["questions_minute"] == 3 and row["at_limit"] == ["questions_per_minute"]


async def test_a_bad_limits_block_stops_startup_with_a_message():
    plugin = {"state_database": ":memory:", "limits": {"questions_per_minute": "many"}}
    kwargs = {"config" if P.IS_V1 else "metadata": {"plugins": {"datasette-llm-newsroom": plugin}}}
    ds = Datasette([], **kwargs)
    with pytest.raises(ConfigError, match="limits: questions_per_minute"):
        await ds.invoke_startup()
