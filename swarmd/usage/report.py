"""The ``GET /v1/usage`` document, its query, and how ``swarmctl usage`` prints it.

Theory of operation
-------------------
``swarmctl usage --by model --since 7d`` asks the control API for
``/v1/usage?by=model&since=604800`` (``since``: seconds back from the
daemon's now).  The daemon answers a :class:`UsageDoc`: one row per value of
the grouping field, the field named exactly as ``by`` (``"key"``, ``"user"``,
``"project"``, ``"model"`` or ``"node"``), with ``requests``,
``prompt_tokens``, ``completion_tokens`` and ``cost_usd``; ``partial`` is true
when the answer lacks some nodes' share (with ``note`` saying why).

Both sides use this module: the daemon parses the query with
:func:`parse_usage_query` and builds the answer with :func:`usage_doc`; the
CLI builds the URL with :func:`usage_url` and prints rows as JSON (the list as
sent), CSV (:func:`write_csv`, a header row then one line per row) or a table
(:func:`table_rows`).  Standard library only: ``swarmctl`` must start fast.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, NotRequired, TextIO, TypedDict, cast
from urllib.parse import urlencode

#: ``--by`` values, which are also the grouping field's name in each row.
BY: tuple[str, ...] = ("key", "user", "project", "model", "node")
#: The numeric fields of every row, in print order.
FIELDS: tuple[str, ...] = ("requests", "prompt_tokens", "completion_tokens", "cost_usd")


class UsageDoc(TypedDict):
    """The answer of ``GET /v1/usage``."""

    by: str  # one of BY
    since: float  # seconds back from the daemon's now that the rows cover
    rows: list[dict[str, Any]]  # {by: value, "requests", "prompt_tokens", ...}
    partial: bool  # some nodes' share is missing
    note: NotRequired[str]  # why partial (or any caveat), for a human


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"12h"``, ``"7d"``, ``"2w"`` (or sums such as
    ``"1d12h"``) -> seconds.  ValueError with a message for a human."""
    s = text.strip().lower()
    parts = _PART.findall(s)
    if not s or "".join(n + u for n, u in parts) != s:
        raise ValueError(f"bad duration {text!r}: give a number and a unit s, m, h, d or w "
                         "(90s, 30m, 12h, 7d, 2w)")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"bad duration {text!r}: must be more than zero")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds for display, in the largest whole unit up to days: ``604800 -> "7d"``."""
    for unit in ("d", "h", "m"):
        n = seconds / _UNITS[unit]
        if n >= 1 and n == int(n):
            return f"{int(n)}{unit}"
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds}s"


def usage_url(by: str, since_s: float) -> str:
    """The control API path for a usage query."""
    since = str(int(since_s)) if since_s == int(since_s) else repr(float(since_s))
    return "/v1/usage?" + urlencode({"by": by, "since": since})


def parse_usage_query(query: Mapping[str, str], *, default_by: str = "model",
                      default_since: float = 7 * 86400.0) -> tuple[str, float]:
    """``/v1/usage``'s query -> (by, since seconds); ValueError (answer 400) if bad."""
    by = query.get("by", default_by)
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}, not {by!r}")
    raw = query.get("since")
    if raw is None:
        return by, default_since
    try:
        since = float(raw)
    except ValueError:
        raise ValueError(f"since must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(since) or since <= 0:
        raise ValueError(f"since must be a positive number of seconds, not {raw!r}")
    return by, since


def usage_doc(by: str, since: float, rows: Sequence[Mapping[str, Any]], *,
              partial: bool = False, note: str = "") -> UsageDoc:
    """The answer document; each row keeps the grouping field and :data:`FIELDS`
    (other keys it carries, such as ``errors``, are kept too)."""
    doc = UsageDoc(by=by, since=since, rows=[dict(r) for r in rows], partial=partial)
    if note:
        doc["note"] = note
    return doc


def check_doc(doc: object) -> UsageDoc:
    """The daemon's answer, checked enough to print; ValueError if it is not one."""
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list) \
            or not all(isinstance(r, dict) for r in doc["rows"]):
        raise ValueError("the daemon's /v1/usage answer has no list of rows")
    return cast(UsageDoc, doc)


# -- printing ----------------------------------------------------------------------------


def write_csv(by: str, rows: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    """A header row (``by`` then :data:`FIELDS`) and one line per row."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow((by, *FIELDS))
    for r in rows:
        w.writerow((r.get(by, ""), *(r.get(f, 0) for f in FIELDS)))


def _int(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else "-"


def usd(v: Any) -> str:
    """Dollars for a table: ``$0``, ``$0.000150``, ``$12.35``."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "-"
    if v == 0:
        return "$0"
    return f"${v:.6f}" if abs(v) < 1 else f"${v:,.2f}"


def table_rows(by: str, rows: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """One line per row and a TOTAL line when there is more than one."""
    out = [[str(r.get(by) or "(none)"), *(_int(r.get(f)) for f in FIELDS[:3]),
            usd(r.get("cost_usd"))] for r in rows]
    if len(rows) > 1:
        total = [sum(v for r in rows if isinstance(v := r.get(f), int)) for f in FIELDS[:3]]
        cost = sum(float(v) for r in rows if isinstance(v := r.get("cost_usd"), int | float))
        out.append(["TOTAL", *(_int(t) for t in total), usd(cost)])
    return out


def table_columns(by: str) -> tuple[str, ...]:
    return (by.upper(), "REQUESTS", "PROMPT", "COMPLETION", "COST")
