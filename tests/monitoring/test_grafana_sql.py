"""The expansions of Grafana's PostgreSQL macros, as Grafana's documentation gives them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from monitoring.grafana_sql import MacroError, QueryTime, expand

# The documentation's examples use this range.
WHEN = QueryTime(
    datetime(2017, 4, 21, 5, 1, 17, tzinfo=UTC),
    datetime(2017, 4, 21, 5, 6, 17, tzinfo=UTC),
    timedelta(minutes=5),
)


@pytest.mark.parametrize(
    ("sql", "expanded"),
    [
        (
            "$__timeFilter(dateColumn)",
            "dateColumn BETWEEN '2017-04-21T05:01:17Z' AND '2017-04-21T05:06:17Z'",
        ),
        ("$__timeFrom()", "'2017-04-21T05:01:17Z'"),
        ("$__timeTo()", "'2017-04-21T05:06:17Z'"),
        ("$__time(dateColumn)", 'dateColumn AS "time"'),
        ("$__timeEpoch(dateColumn)", 'extract(epoch from dateColumn) as "time"'),
        ("$__timeGroup(dateColumn,'5m')", "floor(extract(epoch from dateColumn)/300)*300"),
        ("$__timeGroup(dateColumn, 1h, 0)", "floor(extract(epoch from dateColumn)/3600)*3600"),
        (
            "$__timeGroupAlias(dateColumn,'5m')",
            'floor(extract(epoch from dateColumn)/300)*300 AS "time"',
        ),
        ("$__unixEpochFilter(t)", "t >= 1492750877 AND t <= 1492751177"),
        ("$__unixEpochFrom() $__unixEpochTo()", "1492750877 1492751177"),
        ("$__interval $__interval_ms", "5m 300000"),
        ("$__timeGroupAlias(d, $__interval)", 'floor(extract(epoch from d)/300)*300 AS "time"'),
    ],
)
def test_macros_expand_as_grafana_documents(sql: str, expanded: str) -> None:
    assert expand(sql, WHEN) == expanded


def test_a_time_group_followed_by_a_comma_gets_its_alias() -> None:
    """Grafana's compatibility with dashboards from before 5.3."""
    assert expand("SELECT $__timeGroup(d, 1m), v", WHEN) == (
        'SELECT floor(extract(epoch from d)/60)*60 AS "time", v'
    )
    assert expand("ORDER BY $__timeGroup(d, 1m)) AS x", WHEN).startswith("ORDER BY floor(")


@pytest.mark.parametrize(
    ("interval", "written"),
    [
        (timedelta(milliseconds=500), "500ms"),
        (timedelta(seconds=30), "30s"),
        (timedelta(seconds=90), "1m"),
        (timedelta(hours=2), "2h"),
        (timedelta(days=3), "3d"),
        (timedelta(days=400), "1y"),
    ],
)
def test_the_interval_is_written_in_its_largest_whole_unit(
    interval: timedelta, written: str
) -> None:
    assert expand("$__interval", QueryTime(WHEN.start, WHEN.end, interval)) == written


def test_fractions_of_a_second_lose_their_trailing_zeros() -> None:
    when = QueryTime(WHEN.start.replace(microsecond=250000), WHEN.end, WHEN.interval)
    assert expand("$__timeFrom()", when) == "'2017-04-21T05:01:17.25Z'"


def test_times_are_written_in_utc() -> None:
    local = datetime(2017, 4, 21, 9, 1, 17, tzinfo=timezone(timedelta(hours=2)))
    when = QueryTime(local, WHEN.end, WHEN.interval)
    assert expand("$__timeFrom()", when) == "'2017-04-21T07:01:17Z'"


@pytest.mark.parametrize(
    "sql", ["$__nope(x)", "$__timeGroup(d)", "$__timeGroup(d, soon)", "$__timeFilter()"]
)
def test_what_grafana_refuses_is_an_error(sql: str) -> None:
    with pytest.raises(MacroError):
        expand(sql, WHEN)
