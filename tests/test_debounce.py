"""Debouncer: quiet window, maximum delay, install in progress; a fake clock, no sleeping."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from pkgckpt.debounce import Debouncer

A = Path("/site-a")
B = Path("/site-b")


def never(root: Path) -> bool:
    return False


def always(root: Path) -> bool:
    return True


def test_idle_debouncer_has_no_deadline() -> None:
    """Nothing pending means no wake-up is scheduled at all."""
    d = Debouncer(quiet=1.0, max_delay=10.0)
    assert d.next_deadline(0.0) is None
    assert d.ready(100.0, never) == []


def test_root_is_ready_only_after_the_quiet_window() -> None:
    """A root touched at t is not ready before t + quiet and is ready at t + quiet."""
    d = Debouncer(quiet=1.0, max_delay=10.0)
    d.touch(A, 0.0)
    assert d.ready(0.99, never) == []
    assert d.next_deadline(0.5) == 0.5
    assert d.ready(1.0, never) == [A]
    assert d.pending() == frozenset()
    assert d.next_deadline(1.0) is None


def test_each_touch_restarts_the_quiet_window() -> None:
    """Events keep arriving: the root waits for quiet after the last one."""
    d = Debouncer(quiet=1.0, max_delay=10.0)
    for t in (0.0, 0.8, 1.6, 2.4):
        d.touch(A, t)
        assert d.ready(t + 0.5, never) == []
    assert d.next_deadline(2.4) == 1.0
    assert d.ready(3.4, never) == [A]


def test_busy_root_waits_until_the_install_completes() -> None:
    """A quiet root with an install in progress is not ready; it is once busy() says done."""
    d = Debouncer(quiet=1.0, max_delay=30.0)
    installing = {A}
    d.touch(A, 0.0)
    assert d.ready(1.0, installing.__contains__) == []
    # Asked again one quiet window after the check that found it busy.
    assert d.next_deadline(1.0) == 1.0
    assert d.ready(1.5, installing.__contains__) == []
    installing.clear()
    assert d.ready(2.0, installing.__contains__) == [A]


def test_busy_is_asked_only_once_the_root_is_quiet() -> None:
    """busy() (which stats the disk) is not called for roots still inside their window."""
    d = Debouncer(quiet=1.0, max_delay=30.0)
    asked: list[Path] = []

    def busy(root: Path) -> bool:
        asked.append(root)
        return False

    d.touch(A, 0.0)
    d.touch(B, 0.9)
    assert d.ready(1.0, busy) == [A]
    assert asked == [A]


def test_max_delay_forces_a_root_that_stays_busy() -> None:
    """An install that never completes still gets the root scanned after max_delay."""
    d = Debouncer(quiet=1.0, max_delay=5.0)
    d.touch(A, 0.0)
    for t in (1.0, 2.0, 3.0, 4.0):
        assert d.ready(t, always) == []
    assert d.ready(5.0, always) == [A]


def test_max_delay_forces_a_root_that_never_goes_quiet() -> None:
    """Events every half second for ever: the root is still scanned max_delay after the first."""
    d = Debouncer(quiet=1.0, max_delay=5.0)
    t = 0.0
    while t < 5.0:
        d.touch(A, t)
        assert d.ready(t, never) == []
        t += 0.5
    d.touch(A, t)
    assert d.ready(t, never) == [A]
    assert d.unsettled == frozenset({A})


def test_only_a_root_still_changing_at_max_delay_is_unsettled() -> None:
    """A root handed out while its events go on is unsettled; one handed out after its
    quiet window, or at max_delay a quiet window after its last event, is not."""
    d = Debouncer(quiet=1.0, max_delay=5.0)
    d.touch(A, 10.0)
    d.touch(B, 10.0)
    d.touch(B, 14.5)
    assert d.ready(15.0, never) == [A, B]
    assert d.unsettled == frozenset({B})
    d.touch(A, 20.0)
    assert d.ready(21.0, never) == [A]
    assert d.unsettled == frozenset()
    d.touch(A, 30.0)
    d.touch(A, 34.0)
    assert d.ready(35.0, always) == [A]  # quiet, but an install is in progress: the
    assert d.unsettled == frozenset()  # scan takes its entries as uncertain


def test_roots_are_independent() -> None:
    """One root's events do not delay another root."""
    d = Debouncer(quiet=1.0, max_delay=10.0)
    d.touch(A, 0.0)
    d.touch(B, 0.5)
    assert d.ready(1.0, never) == [A]
    assert d.pending() == frozenset({B})
    assert d.next_deadline(1.0) == 0.5
    assert d.ready(1.5, never) == [B]


def test_a_ready_root_starts_a_new_max_delay_clock() -> None:
    """After a root was handed out, its next event starts a fresh first-event time."""
    d = Debouncer(quiet=1.0, max_delay=5.0)
    d.touch(A, 0.0)
    assert d.ready(1.0, never) == [A]
    d.touch(A, 4.0)
    assert d.ready(5.0, always) == []
    assert d.ready(9.0, always) == [A]


@given(
    st.lists(
        st.tuples(st.sampled_from([A, B]), st.floats(0, 100)),
        max_size=30,
    ),
    st.floats(0.01, 5),
    st.floats(0.01, 50),
)
def test_every_touched_root_is_handed_out_by_max_delay(
    touches: list[tuple[Path, float]], quiet: float, max_delay: float
) -> None:
    """Whatever the events, no root stays pending past max_delay."""
    d = Debouncer(quiet=quiet, max_delay=max_delay)
    out: list[Path] = []
    now = 0.0
    for root, dt in touches:
        now += dt
        d.touch(root, now)
        out += d.ready(now, always)
        deadline = d.next_deadline(now)
        assert deadline is None or deadline >= 0
    # Waking at each deadline (a real clock is a little late) hands everything out.
    end = now + max_delay
    while (step := d.next_deadline(now)) is not None:
        now += step + 1e-9
        assert now <= end + 1e-6
        out += d.ready(now, always)
    assert set(out) >= {root for root, _ in touches}
