"""The canary's live check: probe the endpoint while the candidate takes a share of the traffic.

On a platform that splits traffic (Vertex AI), a promotion first gives the candidate a small
share; real online requests (the run's smoke-test instances, one request after another)
go to the endpoint for ``seconds``, and the answers say which version served each. The
candidate takes all the traffic only when the failed share of the probes stays at or below
``max_error_rate`` and the candidate answered some of them itself (the watch goes on until it
has, within MAX_PROBES); otherwise the traffic goes back. Platform-neutral: ``watch`` takes a
``probe(instances) -> version that answered``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)
MIN_PROBES = 20
#: Probes a second: enough to see a broken version within seconds, too few to load the endpoint.
PROBES_PER_SECOND = 10.0
#: The watch goes on past its seconds until the candidate itself answered this many probes (a 10 % share
#: misses all of 20 probes one time in nine), up to MAX_PROBES: a candidate that never answers fails.
MIN_CANDIDATE_ANSWERS = 3
MAX_PROBES = 300


@dataclass
class Watch:
    """What the probes saw: requests, failures (with their first messages) and answers per version."""

    requests: int = 0
    failures: int = 0
    answered_by: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "answered_by": dict(self.answered_by), "error_rate": round(self.error_rate, 4)}


def watch(probe: Callable[[list], str], instances: list, *, seconds: float, candidate: str | None = None,
          min_probes: int = MIN_PROBES, per_second: float = PROBES_PER_SECOND,
          clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Watch:
    """Send ``instances`` (one per request, round robin, ``per_second`` at most) for ``seconds`` and at least
    ``min_probes`` requests; then on until ``candidate`` answered MIN_CANDIDATE_ANSWERS of them (at most
    MAX_PROBES in all), so a small share is judged on its own answers, not on chance."""
    seen, started = Watch(), clock()

    def more() -> bool:  # progress is logged every 50 probes below, the extension included
        if seen.requests < min_probes or clock() - started < seconds:
            return True
        short = candidate is not None and seen.answered_by[candidate] < MIN_CANDIDATE_ANSWERS
        return short and seen.requests < MAX_PROBES

    while more():
        if (ahead := started + seen.requests / per_second - clock()) > 0:
            sleep(ahead)
        instance = instances[seen.requests % len(instances)]
        seen.requests += 1
        try:
            seen.answered_by[probe([instance])] += 1
        except Exception as error:  # any failed request counts: the live error rate is what the canary judges
            seen.failures += 1
            message = f"{error.__class__.__name__}: {str(error)[:200]}"
            if len(seen.errors) < 5 and message not in seen.errors:
                seen.errors.append(message)
        if seen.requests % 50 == 0:
            log.info("Canary: %s probes, %s failed, answered by %s", seen.requests, seen.failures,
                     dict(seen.answered_by))
    seen.seconds = round(clock() - started, 1)
    return seen


def verdict(seen: Watch, *, candidate: str, max_error_rate: float) -> tuple[bool, str]:
    """(take all the traffic?, why)."""
    summary = (f"{seen.requests} probes in {seen.seconds:.0f} s, {seen.failures} failed "
               f"({seen.error_rate:.1%}, at most {max_error_rate:.1%} allowed), answered by {dict(seen.answered_by)}")
    if seen.error_rate > max_error_rate:
        return False, f"canary failed: {summary}; first errors: {seen.errors}"
    if not seen.answered_by.get(candidate):
        return False, f"canary failed: the candidate {candidate} answered none of the probes: {summary}"
    return True, f"canary passed: {summary}"
