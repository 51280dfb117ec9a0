"""When the keeper renews: half-life by default, a settable margin, jitter, backoff."""

from __future__ import annotations

import pytest

from allasrun.auth.schedule import Schedule
from allasrun.auth.token import Token

TEST_TOKEN = Token("t", 1000.0, 1090.0, "s", "p", "u")  # the stack's 90 s token
ALLAS_TOKEN = Token("t", 0.0, 8 * 3600.0, "s", "p", "u")


def test_default_renews_at_half_life() -> None:
    schedule = Schedule()
    assert schedule.renew_at(TEST_TOKEN, 0.0) == 1045.0
    assert schedule.renew_at(ALLAS_TOKEN, 0.0) == 4 * 3600.0


def test_jitter_only_moves_renewal_earlier_and_stays_bounded() -> None:
    schedule = Schedule()
    late, early = schedule.renew_at(TEST_TOKEN, 0.0), schedule.renew_at(TEST_TOKEN, 0.999)
    assert 1045.0 - 4.5 < early < late == 1045.0


def test_margin_is_capped_below_the_lifetime() -> None:
    schedule = Schedule(margin=600.0)
    assert schedule.margin_for(TEST_TOKEN) == 67.5
    assert schedule.margin_for(ALLAS_TOKEN) == 600.0


def test_fresh_enough_means_more_than_the_margin_left() -> None:
    schedule = Schedule()
    assert schedule.fresh_enough(TEST_TOKEN, 1040.0)
    assert not schedule.fresh_enough(TEST_TOKEN, 1046.0)


def test_backoff_doubles_up_to_a_minute() -> None:
    schedule = Schedule()
    delays = [schedule.retry_delay(n, ALLAS_TOKEN, 0.0) for n in (1, 2, 3, 7, 20)]
    assert delays == [1.0, 2.0, 4.0, 60.0, 60.0]


def test_backoff_stays_capped_however_long_the_outage() -> None:
    """Attempt 1026 is 17 hours of failures at the 60 s cap: the delay must still be 60 s."""
    assert Schedule().retry_delay(1026, ALLAS_TOKEN, 0.0) == 60.0
    assert Schedule().retry_delay(10**6, ALLAS_TOKEN, 0.0) == 60.0


def test_backoff_of_a_short_token_is_capped_at_a_twentieth_of_its_life() -> None:
    """A 90 s token retried a minute apart could expire between two attempts."""
    assert Schedule().retry_delay(20, TEST_TOKEN, 0.0) == 4.5


def test_backoff_is_jittered_down_by_at_most_half() -> None:
    schedule = Schedule()
    assert schedule.retry_delay(7, ALLAS_TOKEN, 0.999) == pytest.approx(30.03)
    assert schedule.retry_delay(1, ALLAS_TOKEN, 0.5) == 0.75


@pytest.mark.parametrize("skew", [600.0, -600.0, 50.0, -0.5])
def test_a_fresh_token_shows_a_skewed_clock(skew: float) -> None:
    assert Schedule().clock_offset(TEST_TOKEN, TEST_TOKEN.issued_at + skew) == skew


@pytest.mark.parametrize("age", [0.0, 0.2, 45.0])
def test_a_token_younger_than_its_renewal_share_shows_nothing(age: float) -> None:
    """A cached token of another run looks like a clock ahead by its age: trusted, renewed early."""
    assert Schedule().clock_offset(TEST_TOKEN, TEST_TOKEN.issued_at + age) == 0.0


def test_renewals_keep_a_minimum_distance_when_the_clock_runs_ahead() -> None:
    """A clock 60 s ahead of Keystone sees the 90 s token past its renewal point at once."""
    schedule = Schedule(jitter=0)
    now = TEST_TOKEN.issued_at + 60.0
    assert schedule.delay(TEST_TOKEN, now, 0.0, renewed_at=None) == 0.0
    assert schedule.delay(TEST_TOKEN, now, 0.0, renewed_at=now) == 9.0  # a tenth of its life
    assert schedule.delay(TEST_TOKEN, now + 4.0, 0.0, renewed_at=now) == 5.0


def test_the_minimum_distance_never_delays_a_renewal_on_schedule() -> None:
    for schedule in (Schedule(), Schedule(margin=10**6)):  # the widest margin, the default jitter
        for token in (TEST_TOKEN, ALLAS_TOKEN):
            now = token.issued_at
            assert schedule.delay(token, now, 0.999, renewed_at=now) == schedule.renew_at(token, 0.999) - now
