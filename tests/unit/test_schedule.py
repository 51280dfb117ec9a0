"""When the keeper renews: half-life by default, a settable margin, jitter, backoff."""

from __future__ import annotations

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
    assert [schedule.retry_delay(n) for n in (1, 2, 3, 7, 20)] == [1.0, 2.0, 4.0, 60.0, 60.0]


def test_backoff_stays_capped_however_long_the_outage() -> None:
    """Attempt 1026 is 17 hours of failures at the 60 s cap: the delay must still be 60 s."""
    assert Schedule().retry_delay(1026) == 60.0
    assert Schedule().retry_delay(10**6) == 60.0


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
