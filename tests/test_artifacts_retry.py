"""The capture retry policy as a pure function of the clock: bounded backoff, a bound
on the rounds, nothing due when nothing failed."""

from __future__ import annotations

from pkgckpt.artifacts.retry import Retries


def test_failed_rounds_back_off_doubling_then_give_up_after_the_bound() -> None:
    """Each failed round waits 0.5-1x of 5 s doubling; after `attempts` failed retries
    the packages are given up, said with the reason, and nothing is due any more."""
    r = Retries(attempts=3)
    assert r.at is None and not r.due(1e9)
    now = 100.0
    for n in range(3):
        r.settle({"a==1 (/env)": "store down"}, now)
        assert r.at is not None
        assert now + 2.5 * 2**n <= r.at <= now + 5.0 * 2**n
        assert r.skip == {"a==1 (/env)": "store down"}
        assert f"retry {n + 1} of 3 is due" in r.reasons()["a==1 (/env)"]
        assert not r.due(r.at - 0.01) and r.due(r.at)
        now = r.at
        r.release()
        assert r.skip == {}
    r.settle({"a==1 (/env)": "store down"}, now)
    assert r.at is None and not r.due(1e12)
    assert "store down (gave up after 3 retries" in r.reasons()["a==1 (/env)"]
    assert r.skip == {"a==1 (/env)": "store down"}


def test_a_round_that_goes_through_resets_the_backoff() -> None:
    """A successful retry round starts the next failure's wait from 5 s again."""
    r = Retries(attempts=5)
    r.settle({"a": "x"}, 0.0)
    r.release()
    r.settle({"a": "x"}, 10.0)
    r.release()
    r.settle({}, 30.0)
    r.settle({"b": "y"}, 40.0)
    assert r.at is not None and r.at <= 45.0


def test_the_cap_bounds_the_wait() -> None:
    """No wait is longer than the cap, however many rounds failed."""
    r = Retries(attempts=50, first=5.0, cap=600.0)
    for _ in range(40):
        r.settle({"a": "x"}, 0.0)
        assert r.at is not None and r.at <= 600.0
        r.release()


def test_asking_retries_what_was_given_up_once_more() -> None:
    """`ask` (a snapshot) releases given-up packages; one more failure gives them up
    again at once, with no wake-up scheduled."""
    r = Retries(attempts=1)
    r.settle({"a": "x"}, 0.0)
    r.release()
    r.settle({"a": "x"}, 10.0)
    assert r.gave_up and r.at is None
    r.ask()
    assert r.skip == {}
    r.settle({"a": "x"}, 20.0)
    assert r.gave_up == {"a": "x"} and r.at is None
