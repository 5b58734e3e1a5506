"""A panel's SQL as Grafana's PostgreSQL data source sends it: its macros expanded.

What runs a panel's query outside Grafana (tests/monitoring/test_usage_dashboard.py,
bench/usage_queries.py) must see the statement Grafana would send. Grafana's documentation
of the PostgreSQL query editor gives the expansions; Grafana makes them in two passes,
and so does `expand`:

1. Variables: `$__interval_ms` (the panel's interval in milliseconds), `$__interval` (the
   same written `30s`, `5m`, `1h`, `1d`: the largest unit that fits, whole units),
   `$__unixEpochFrom()` and `$__unixEpochTo()` (epoch seconds).
2. Macros `$__name(arguments)` (the arguments end at the first `)`, split at commas):
   `$__timeFilter(col)` -> `col BETWEEN '<from>' AND '<to>'` (UTC, RFC 3339, fractions of
   a second without trailing zeros), `$__timeFrom()` / `$__timeTo()` -> `'<from>'` /
   `'<to>'`, `$__timeGroup(col, interval)` ->
   `floor(extract(epoch from col)/<seconds>)*<seconds>`, `$__timeGroupAlias(col, interval)`
   -> the same `AS "time"`, `$__time(col)` -> `col AS "time"`, `$__timeEpoch(col)` ->
   `extract(epoch from col) as "time"`, `$__unixEpochFilter(col)` ->
   `col >= <from> AND col <= <to>` (epoch seconds). A `$__timeGroup(...)` directly followed
   by a comma is taken as `$__timeGroupAlias` (Grafana's compatibility with dashboards
   from before 5.3). Any other macro is an error, as in Grafana.

The third `$__timeGroup` argument (a fill mode) changes what Grafana does with the rows
it gets back, not the statement: it is accepted and has no effect here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_MACRO = re.compile(r"\$(\w+)\(([^)]*)\)")
_INTERVAL = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
# How `$__interval` is written: the largest unit that fits (years counted as 365 days).
_WRITTEN = (
    ("y", timedelta(days=365)),
    ("d", timedelta(days=1)),
    ("h", timedelta(hours=1)),
    ("m", timedelta(minutes=1)),
    ("s", timedelta(seconds=1)),
    ("ms", timedelta(milliseconds=1)),
)


class MacroError(ValueError):
    """A macro Grafana would refuse: unknown, or with missing or unreadable arguments."""


@dataclass(frozen=True)
class QueryTime:
    """What Grafana sends with each query: the dashboard's time range (aware datetimes)
    and the panel's interval."""

    start: datetime
    end: datetime
    interval: timedelta


def parse_interval(text: str) -> timedelta:
    match = _INTERVAL.match(text.strip("'"))
    if match is None:
        raise MacroError(f"error parsing interval {text}")
    return int(match[1]) * _UNITS[match[2]]


def written_interval(interval: timedelta) -> str:
    for unit, size in _WRITTEN:
        if interval >= size:
            return f"{interval // size}{unit}"
    return "1ms"


def timestamp(moment: datetime) -> str:
    """UTC, RFC 3339, the fraction of a second without trailing zeros (Go's RFC3339Nano)."""
    moment = moment.astimezone(UTC)
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return f"{moment:%Y-%m-%dT%H:%M:%S}{'.' + fraction if fraction else ''}Z"


def seconds(interval: timedelta) -> str:
    """A number of seconds as Go's `%v` prints a float: `60`, `0.5`."""
    value = interval.total_seconds()
    return str(int(value)) if value.is_integer() else repr(value)


def variables(sql: str, when: QueryTime) -> str:
    """The first pass: Grafana's global variables, replaced as plain text."""
    sql = sql.replace("$__interval_ms", str(when.interval // timedelta(milliseconds=1)))
    sql = sql.replace("$__interval", written_interval(when.interval))
    sql = sql.replace("$__unixEpochFrom()", str(int(when.start.timestamp())))
    return sql.replace("$__unixEpochTo()", str(int(when.end.timestamp())))


def _column(name: str, args: list[str]) -> str:
    if not args or not args[0]:
        raise MacroError(f"missing time column argument for macro {name}")
    return args[0]


def _time_group(name: str, args: list[str]) -> str:
    if len(args) < 2:
        raise MacroError(f"macro {name} needs time column and interval and optional fill value")
    step = seconds(parse_interval(args[1]))
    return f"floor(extract(epoch from {args[0]})/{step})*{step}"


def _macros(when: QueryTime) -> dict[str, Callable[[str, list[str]], str]]:
    start, end = timestamp(when.start), timestamp(when.end)
    epoch = int(when.start.timestamp()), int(when.end.timestamp())
    return {
        "__time": lambda n, a: f'{_column(n, a)} AS "time"',
        "__timeEpoch": lambda n, a: f'extract(epoch from {_column(n, a)}) as "time"',
        "__timeFilter": lambda n, a: f"{_column(n, a)} BETWEEN '{start}' AND '{end}'",
        "__timeFrom": lambda n, a: f"'{start}'",
        "__timeTo": lambda n, a: f"'{end}'",
        "__timeGroup": _time_group,
        "__timeGroupAlias": lambda n, a: _time_group(n, a) + ' AS "time"',
        "__unixEpochFilter": lambda n, a: (
            f"{_column(n, a)} >= {epoch[0]} AND {_column(n, a)} <= {epoch[1]}"
        ),
    }


def expand(sql: str, when: QueryTime) -> str:
    """The statement Grafana's PostgreSQL data source runs for `sql` at `when`."""
    sql = variables(sql, when)
    macros = _macros(when)

    def one(match: re.Match[str]) -> str:
        name, args = match[1], [arg.strip() for arg in match[2].split(",")]
        # As Grafana does: the character after the first place this very text stands.
        after = sql.find(match[0]) + len(match[0])
        if name == "__timeGroup" and sql[after : after + 1] == ",":
            name = "__timeGroupAlias"
        if name not in macros:
            raise MacroError(f"unknown macro {name!r}")
        return macros[name](f"${name}", args)

    return _MACRO.sub(one, sql)
