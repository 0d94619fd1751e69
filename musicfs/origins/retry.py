"""Retries of remote origin requests, in one place: which failures are worth another attempt,
how long to pause between attempts, and the rule that keeps all of it within the origin's
``timeout``.

* An origin translates its transport's errors into musicfs's (see errors.py) and marks the
  ones a new attempt may not meet again as :class:`OriginTransient` - a connection reset or
  dropped, one attempt that got no answer in time, a throttled or overloaded server. Nothing
  else is retried here: a file that is not there, a changed file (OriginChanged), a refused
  credential or host key (OriginMisconfigured), a permission error. Those would fail the same
  way again, and retrying them would only delay the answer a user or a replica is waiting for.
* Every attempt is bounded by ``attempt_timeout`` (the origin sets its sockets' timeouts to the
  budget an attempt is given), and a retry starts only if a whole attempt still fits before
  the deadline after the pause. So a request costs at most its deadline, however it fails;
  quick failures (a reset connection) leave room for more attempts than slow ones.
* Pauses double from ``backoff``: a server that is restarting gets a moment, and a burst of
  failing requests does not hammer it. No jitter: an origin has at most a few requests in
  flight, not a fleet of clients to spread out.

The transport's own retries are off (botocore's max_attempts is 1): two layers of retries
would multiply the budget.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import OriginTransient, OriginUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# Three attempts: one for the request, one after a dropped connection, and one more when both
# failed fast (a server restarting refuses connections for a moment).
ATTEMPTS = 3
# The first pause; each further one doubles (0.1 s, 0.2 s): long enough for a reconnect to meet
# a restarted server, short against any origin timeout.
BACKOFF = 0.1


def is_transient(error: BaseException) -> bool:
    """The one decision of what is retried: failures a new attempt may not meet again."""
    return isinstance(error, OriginTransient)


def attempt_timeout(timeout: float) -> float:
    """How long one attempt may wait for an answer: a little under half the budget, so that an
    attempt that got no answer, the first pause and one more attempt (on a new connection) fit,
    with room for the reconnect's own overhead. Fast failures leave room for more attempts."""
    return 0.45 * timeout


def retrying(call: Callable[[float], T], *, deadline: float, attempt_timeout: float,
             attempts: int = ATTEMPTS, backoff: float = BACKOFF, retry_on=is_transient,
             clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
             what: str = "origin") -> T:
    """``call(budget)`` until it returns or fails for good, within `deadline` (a `clock` time).

    `budget` is what the attempt may spend (at most `attempt_timeout`, never beyond the
    deadline). A failure for which ``retry_on(error)`` is false is raised at once; a transient
    one is retried after a pause while attempts are left and a whole attempt still fits before
    the deadline; otherwise the last failure is raised, naming the first one too when it said
    something else (a server that stopped answering, then a reconnect that failed otherwise)."""
    first = None
    for attempt in range(1, attempts + 1):
        budget = min(attempt_timeout, deadline - clock())
        if budget <= 0:
            raise OriginUnavailable(f"{what}: no time left for an attempt")
        try:
            return call(budget)
        except BaseException as error:
            if not retry_on(error):
                raise
            first = first or error
            pause = backoff * 2 ** (attempt - 1)
            if attempt == attempts or clock() + pause + attempt_timeout > deadline:
                if first is not error and str(first) != str(error):
                    raise OriginTransient(f"{error} (first attempt: {first})") from error
                raise
            log.info("%s: %s; attempt %d of %d in %.1fs", what, error, attempt + 1, attempts, pause)
            sleep(pause)
    raise AssertionError("unreachable")   # the loop returns or raises
