"""Data by period: which period's data a run trains and evaluates on, and where that data lives.

A feed writes one folder per period under the data root: ``<data_uri>/<YYYY-MM-DD>/``
(the period's start date). A scheduled run takes its data interval's period; a run the
data-arrival Asset triggered takes the period the event names; a manual run takes the
``data_period`` Param: ``latest`` (the newest period present, or the run's own when
none is) or a date. A data root with no period folders at all is one dataset (data
written before periods, or a user's single dataset): it is used as it is.

The local stack's feed (``data_arrival``) generates each period's examples with a drift
that moves every week (``drift``), so a model trained weeks ago meets data it never saw.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from datetime import date, datetime

from include.lifecycle.errors import InvalidRequest

PERIOD = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: The week the local feed's drift starts from (drift 0: the original toy task).
DRIFT_ORIGIN = date(2026, 1, 5)
#: The local feed cycles through this many weekly regimes, then starts again: the toy
#: images stay images (spots cannot grow without end) and every week still differs from the last.
DRIFT_CYCLE_WEEKS = 4


@dataclass(frozen=True)
class PeriodData:
    """The period a run uses and the prefix of its data (``period`` None: a data root without periods)."""

    period: str | None
    data_uri: str


def period_of(moment: datetime | date) -> str:
    """The period (its start date, ``YYYY-MM-DD``) that ``moment`` starts."""
    return (moment.date() if isinstance(moment, datetime) else moment).isoformat()


def drift(period: str, *, per_week: float) -> float:
    """The local feed's drift for ``period``: ``per_week`` for each week since DRIFT_ORIGIN, in a cycle."""
    weeks = (date.fromisoformat(period) - DRIFT_ORIGIN).days // 7
    return (weeks % DRIFT_CYCLE_WEEKS) * per_week


def seed(period: str) -> int:
    """A data seed of the period's own: every period gets new examples, the same ones every time."""
    return zlib.crc32(period.encode()) % 2**31


def resolve(data_root: str, present: list[str], *, wanted: str | None, run_period: str) -> PeriodData:
    """The period and data prefix of a run.

    :param data_root: gs:// prefix holding one folder per period.
    :param present: the period folders found under it (``YYYY-MM-DD``), any order.
    :param wanted: the event's period, or the Param: ``latest`` (None, ""), or a date.
    :param run_period: the run's own period (its logical date): ``latest`` is the newest period
        present on or before it (a re-run of an old date finds the data it used), else this one.
    :raises InvalidRequest: ``wanted`` is neither ``latest`` nor a date.
    """
    root = data_root.rstrip("/")
    periods = sorted(p for p in present if PERIOD.match(p) and p <= run_period)
    if wanted in (None, "", "latest"):
        period = periods[-1] if periods else run_period
    elif PERIOD.match(wanted) and _is_date(wanted):
        period = wanted
    else:
        raise InvalidRequest(f"data_period must be 'latest' or a date YYYY-MM-DD, got {wanted!r}")
    return PeriodData(period, f"{root}/{period}")


def _is_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def flat(data_root: str) -> PeriodData:
    """A data root that is one dataset (no period folders)."""
    return PeriodData(None, data_root.rstrip("/"))
