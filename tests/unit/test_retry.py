"""The one retry rule of remote origins (musicfs/origins/retry.py), on a clock the test drives:
what is retried, what is not, and that all attempts and pauses stay within the deadline."""
import errno

import pytest

from musicfs.errors import OriginChanged, OriginMisconfigured, OriginMissing, OriginTransient, OriginUnavailable
from musicfs.origins.retry import ATTEMPTS, BACKOFF, attempt_timeout, retrying


class Clock:
    """Time that passes only when a test says so: a pause, or an attempt that waits."""

    def __init__(self):
        self.now = 100.0
        self.pauses = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def run(clock, call, timeout=10.0, **kwargs):
    return retrying(call, deadline=clock() + timeout, attempt_timeout=kwargs.pop("attempt_timeout", attempt_timeout(timeout)),
                    clock=clock, sleep=clock.sleep, **kwargs)


def test_transient_failures_are_retried_with_growing_pauses():
    clock, budgets = Clock(), []

    def call(budget):
        budgets.append(budget)
        if len(budgets) < 3:
            raise OriginTransient("connection reset")
        return "bytes"
    assert run(clock, call) == "bytes"
    assert clock.pauses == [BACKOFF, 2 * BACKOFF]
    assert budgets == [attempt_timeout(10.0)] * 3


@pytest.mark.parametrize("error", [
    OriginChanged("replaced since the scan"), FileNotFoundError(errno.ENOENT, "gone"),
    PermissionError(errno.EACCES, "denied"), OriginMisconfigured("credentials refused"),
    OriginMissing("no such bucket"), OriginUnavailable("path outside the origin"), ValueError("a bug"),
])
def test_what_another_attempt_would_meet_again_is_raised_at_once(error):
    clock, calls = Clock(), []

    def call(budget):
        calls.append(budget)
        raise error
    with pytest.raises(type(error)):
        run(clock, call)
    assert len(calls) == 1 and clock.pauses == []


def test_attempts_are_capped_and_the_last_failure_is_raised():
    clock, calls = Clock(), []

    def call(budget):
        calls.append(budget)
        raise OriginTransient(f"refused ({len(calls)})")
    with pytest.raises(OriginTransient, match=rf"refused \({ATTEMPTS}\)"):
        run(clock, call)
    assert len(calls) == ATTEMPTS


@pytest.mark.parametrize("timeout", [1.0, 3.0, 5.0, 10.0, 30.0])
def test_attempts_that_get_no_answer_stay_within_the_timeout(timeout):
    """Each attempt waits out its whole budget: one more follows while a whole one fits."""
    clock, calls = Clock(), []
    started = clock()

    def call(budget):
        calls.append(budget)
        clock.now += budget
        raise OriginTransient("no answer")
    with pytest.raises(OriginTransient):
        run(clock, call, timeout=timeout)
    assert clock() - started <= timeout
    assert len(calls) == 2          # a timed-out attempt is retried once, on a new connection


def test_a_slow_failure_leaves_no_room_for_another_attempt():
    clock, calls = Clock(), []

    def call(budget):
        calls.append(budget)
        clock.now += 0.7 * budget   # failed late: what is left is less than a whole attempt
        raise OriginTransient("reset")
    with pytest.raises(OriginTransient):
        run(clock, call, timeout=10.0, attempt_timeout=6.0)
    assert len(calls) == 1


def test_the_budget_never_reaches_past_the_deadline():
    clock, budgets = Clock(), []

    def call(budget):
        budgets.append(budget)
        return "ok"
    run(clock, call, timeout=0.5, attempt_timeout=2.0)
    assert budgets == [0.5]
    with pytest.raises(OriginUnavailable, match="no time left"):
        retrying(call, deadline=clock() - 1, attempt_timeout=2.0, clock=clock, sleep=clock.sleep)
    assert budgets == [0.5]


def test_the_last_failure_names_the_first_when_it_said_something_else():
    """A server that stopped answering, then reconnects that fail another way: the error a user
    sees keeps the first cause, not only the last symptom."""
    clock, calls = Clock(), []

    def call(budget):
        calls.append(budget)
        if len(calls) == 1:
            clock.now += budget
            raise OriginTransient("nas:22: no answer within 4.5s")
        raise OriginTransient("nas:22: the connection to the server was lost")
    with pytest.raises(OriginTransient) as raised:
        run(clock, call)
    assert str(raised.value) == ("nas:22: the connection to the server was lost "
                                 "(first attempt: nas:22: no answer within 4.5s)")
