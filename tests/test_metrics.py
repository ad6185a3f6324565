"""Prometheus metrics: the daemon's --metrics-file and `status --prometheus`, parsed with
prometheus_client's own parser, from a real daemon on a real venv with real installs."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_kit import Daemon, World, context_switches, eventually, uv_install
from prometheus_client.parser import text_string_to_metric_families
from restore_kit import put_manifest
from wheelhouse import Dist, Venv, build_wheel, make_venv

from pkgckpt import metrics
from pkgckpt.manifest import Body, Delta, Environment, Package

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

NAMES = {
    "pkgckpt_manifest_generation": "gauge",
    "pkgckpt_last_commit_timestamp_seconds": "gauge",
    "pkgckpt_pending_changes": "gauge",
    "pkgckpt_commit_failures": "counter",
    "pkgckpt_tracked_packages": "gauge",
    "pkgckpt_watch_overflows": "counter",
    "pkgckpt_scan_seconds": "summary",
}


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """Families (name -> type) and samples ((name, labels) -> value), via the parser."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return types, samples


def value(samples: Samples, name: str, key: str = "k", **labels: str) -> float:
    return samples[(name, frozenset({"key": key, **labels}.items()))]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World.make(tmp_path)


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    out = tmp_path / "wheels"
    for name in ("alpha", "beta"):
        build_wheel(Dist(name, "1.0"), out)
    return out


@pytest.fixture
def venv(world: World) -> Venv:
    v = make_venv(world.tmp / "venv", with_pip=False)
    made = world.pkgckpt("baseline", "--env", str(v.prefix), "--output", str(world.tmp / "b.json"))
    assert made.returncode == 0, made.stderr
    return v


@pytest.fixture
def flags(world: World, venv: Venv) -> list[str]:
    return [*world.flags(venv.prefix), "--baseline", str(world.tmp / "b.json")]


@pytest.fixture
def daemon(world: World, flags: list[str]) -> Iterator[Daemon]:
    d = world.daemon(*flags, "--quiet-ms", "50", "--metrics-file", str(world.tmp / "k.prom"))
    yield d.start()
    d.close()


def test_render_parses_with_every_family_and_escapes_the_key() -> None:
    """Every metric the daemon names parses with its type; a hostile key stays one label."""
    counters = metrics.Counters(
        commit_failures={"unavailable": 2},
        scans=3,
        scan_seconds=0.25,
        tracked={"python": 4, "r": 1},
        committed_at=1700000000.5,
        watch_overflows=1,
    )
    restore = metrics.RestoreRecord(
        finished=1.0, seconds=2.5, packages={"installed": 3, "failed": 1}
    )
    key = 'a"b\\c\nd'
    types, samples = parse(metrics.render(key, 7, 2, counters, restore))
    assert types == {
        **NAMES,
        "pkgckpt_restore_seconds": "gauge",
        "pkgckpt_restore_packages": "gauge",
    }
    assert value(samples, "pkgckpt_manifest_generation", key) == 7
    assert value(samples, "pkgckpt_pending_changes", key) == 2
    assert value(samples, "pkgckpt_commit_failures_total", key, reason="unavailable") == 2
    assert value(samples, "pkgckpt_tracked_packages", key, kind="r") == 1
    assert value(samples, "pkgckpt_scan_seconds_count", key) == 3
    assert value(samples, "pkgckpt_scan_seconds_sum", key) == 0.25
    assert value(samples, "pkgckpt_last_commit_timestamp_seconds", key) == 1700000000.5
    assert value(samples, "pkgckpt_restore_packages", key, outcome="failed") == 1
    assert value(samples, "pkgckpt_restore_seconds", key) == 2.5


def test_no_restore_record_means_no_restore_metrics_and_no_artifact_metric() -> None:
    """Without a restore record the restore families are absent; there is no artifact cache."""
    types, _ = parse(metrics.render("k", None, 0, metrics.Counters(), None))
    assert types == NAMES


@pytest.mark.slow
def test_daemon_writes_the_metrics_file_after_each_commit(
    world: World, venv: Venv, wheels: Path, daemon: Daemon, flags: list[str]
) -> None:
    """An install's commit is in the file; `status --prometheus` prints the same samples."""
    path = world.tmp / "k.prom"
    start = parse(eventually(lambda: path.exists() and path.read_text(), what="metrics file"))[1]
    uv_install(venv.python, wheels, "alpha==1.0", env=world.env)

    def after_commit() -> Samples | None:
        samples = parse(path.read_text())[1]
        tracked = samples.get(
            ("pkgckpt_tracked_packages", frozenset({("key", "k"), ("kind", "python")}))
        )
        return samples if tracked == 1 else None

    samples = eventually(after_commit, what="the install's commit in the metrics")
    generation = world.generation()
    assert value(samples, "pkgckpt_manifest_generation") == generation
    assert value(samples, "pkgckpt_pending_changes") == 0
    assert value(samples, "pkgckpt_scan_seconds_count") > value(start, "pkgckpt_scan_seconds_count")
    assert time.time() - value(samples, "pkgckpt_last_commit_timestamp_seconds") < 60
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    printed = world.pkgckpt("status", "--prometheus", *flags)
    assert printed.returncode == 0, printed.stderr
    assert parse(printed.stdout)[1] == parse(path.read_text())[1]


@pytest.mark.slow
def test_without_a_running_daemon_the_pending_changes_are_what_status_finds(
    world: World, venv: Venv, wheels: Path, flags: list[str]
) -> None:
    """No daemon ran, then one ran and stopped: `status --prometheus` counts the installs
    `status` lists as pending. It said 0, the count of a daemon's stop or none at all,
    while `status` listed them. Where the scan cannot tell, no count is printed."""

    def pending() -> float:
        printed = world.pkgckpt("status", "--prometheus", *flags)
        assert printed.returncode == 0, printed.stderr
        return value(parse(printed.stdout)[1], "pkgckpt_pending_changes")

    uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
    assert "pending  install alpha 1.0" in world.pkgckpt("status", *flags).stdout
    assert pending() == 1
    # A scan that cannot tell (a baseline refused) gives no count, and the rest as before.
    broken = world.tmp / "broken.json"
    broken.write_text("{")
    printed = world.pkgckpt(
        "status", "--prometheus", *world.flags(venv.prefix), "--baseline", str(broken)
    )
    assert printed.returncode == 0, printed.stderr
    types, samples = parse(printed.stdout)
    assert types == NAMES and not [k for k in samples if k[0] == "pkgckpt_pending_changes"]
    d = world.daemon(*flags, "--quiet-ms", "50").start()
    try:
        assert d.stop() == 0, d.output()
    finally:
        d.close()
    assert pending() == 0
    uv_install(venv.python, wheels, "beta==1.0", env=world.env)
    assert pending() == 1


@pytest.mark.slow
def test_a_stopped_daemons_count_is_printed_where_status_cannot_tell(
    world: World, venv: Venv, wheels: Path, daemon: Daemon, flags: list[str]
) -> None:
    """The daemon stops while the store is away, beta seen and not on the store.
    `status --prometheus` cannot tell what is pending either (the store cannot be read):
    it prints the daemon's count at its stop, not 0 and not nothing."""
    uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
    eventually(lambda: world.generation() > 0, what="the first commit")
    world.store.rename(world.tmp / "store.away")
    uv_install(venv.python, wheels, "beta==1.0", env=world.env)
    path = world.tmp / "k.prom"
    eventually(
        lambda: value(parse(path.read_text())[1], "pkgckpt_pending_changes") == 1,
        what="beta pending in the metrics",
    )
    daemon.stop()
    printed = world.pkgckpt("status", "--prometheus", *flags)
    assert printed.returncode == 0, printed.stderr
    assert value(parse(printed.stdout)[1], "pkgckpt_pending_changes") == 1


@pytest.mark.slow
def test_a_store_failure_is_counted_by_reason_and_written_at_once(
    world: World, venv: Venv, wheels: Path, daemon: Daemon
) -> None:
    """A commit that fails (the store became a file) is counted and the file rewritten."""
    path = world.tmp / "k.prom"
    uv_install(venv.python, wheels, "alpha==1.0", env=world.env)
    eventually(lambda: world.generation() > 0, what="the first commit")
    world.store.rename(world.tmp / "store.away")
    world.store.write_text("not a directory")
    uv_install(venv.python, wheels, "beta==1.0", env=world.env)

    def failures() -> float:
        samples = parse(path.read_text())[1]
        return sum(v for (n, _), v in samples.items() if n == "pkgckpt_commit_failures_total")

    eventually(lambda: failures() >= 1, what="the failure in the metrics")
    samples = parse(path.read_text())[1]
    reasons = {
        dict(labels)["reason"] for (n, labels) in samples if n == "pkgckpt_commit_failures_total"
    }
    assert reasons <= {"unavailable", "refused"}
    assert value(samples, "pkgckpt_pending_changes") >= 1


@pytest.mark.slow
def test_an_idle_daemon_never_rewrites_the_metrics_file(world: World, daemon: Daemon) -> None:
    """No timer: with nothing changing, the file keeps its inode and its bytes, and no
    thread of the daemon wakes (its second one sleeps in sigwait, for the signals that
    come during a store call)."""
    path = world.tmp / "k.prom"
    eventually(lambda: path.exists(), what="metrics file")
    assert daemon.proc is not None
    time.sleep(0.5)  # the start's last writes
    before = path.stat()
    woken = context_switches(daemon.proc.pid)
    time.sleep(1.5)
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert context_switches(daemon.proc.pid) == woken
    assert sum(1 for _ in Path(f"/proc/{daemon.proc.pid}/task").iterdir()) == 2


@pytest.mark.slow
def test_the_last_restore_is_in_the_metrics(
    world: World, venv: Venv, wheels: Path, flags: list[str]
) -> None:
    """`pkgckpt restore` leaves its duration and its outcomes for the metrics."""
    env_ = Environment(kind="python", path=str(venv.prefix))
    added = (Package(name="alpha", version="1.0"), Package(name="nowhere", version="1.0"))
    put_manifest(world.store, world.key, Body(environments=(Delta(env=env_, added=added),)))
    done = world.pkgckpt(
        "restore", *flags, "--installer", "uv", "--no-index", "--find-links", str(wheels)
    )
    assert done.returncode == 3, done.stderr
    printed = world.pkgckpt("status", "--prometheus", *flags)
    samples = parse(printed.stdout)[1]
    assert value(samples, "pkgckpt_restore_packages", outcome="installed") == 1
    assert value(samples, "pkgckpt_restore_packages", outcome="failed") == 1
    assert 0 < value(samples, "pkgckpt_restore_seconds") < 120


# -- the README's alerts, against the real metrics file ---------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"
_SELECT = r"(?P<{0}>[a-z_]+)(?:\s*>\s*(?P<{0}_above>[0-9.]+))?"
_ALERT = re.compile(
    rf"{_SELECT.format('left')}"
    r"(?:\s+unless\s+(?:(?P<match>on|ignoring)\((?P<labels>[\w,\s]*)\)\s+)?"
    rf"{_SELECT.format('right')})?"
)


def readme_alerts(words: str) -> list[str]:
    """The expressions of the README's alerts under a comment saying `words`."""
    block = README.read_text().split("alerts worth\nhaving:\n", 1)[1].split("\n\n**", 1)[0]
    found: list[str] = []
    comment, said = "", ""
    for line in (raw.strip() for raw in block.splitlines()):
        if line.startswith("#"):
            comment += " " + line
        elif line:
            said, comment = comment or said, ""
            if words in said:
                found.append(line)
    assert found, f"no alert in README.md about {words!r}"
    return found


def fires(expression: str, samples: Samples) -> list[dict[str, str]]:
    """What `expression` returns on `samples`: PromQL's vector selection, `> N` and
    `unless` with `on`/`ignoring`, enough for the README's alerts on one scrape (an
    expression beyond that fails the test rather than pass it unchecked)."""
    found = _ALERT.fullmatch(expression)
    assert found is not None, f"not an expression this test can evaluate: {expression}"

    def select(side: str) -> list[dict[str, str]]:
        above = found[f"{side}_above"]
        return [
            dict(labels)
            for (name, labels), v in samples.items()
            if name == found[side] and (above is None or v > float(above))
        ]

    left = select("left")
    if found["right"] is None:
        return left
    named = {n.strip() for n in (found["labels"] or "").split(",") if n.strip()}

    def signature(labels: dict[str, str]) -> frozenset[tuple[str, str]]:
        if found["match"] == "on":
            return frozenset((k, v) for k, v in labels.items() if k in named)
        return frozenset((k, v) for k, v in labels.items() if k not in named)

    right = {signature(labels) for labels in select("right")}
    return [labels for labels in left if signature(labels) not in right]


@pytest.mark.slow
def test_the_readme_alert_for_a_store_never_reachable_fires_until_the_first_commit(
    world: World, venv: Venv, wheels: Path, flags: list[str]
) -> None:
    """The store is not there when the daemon starts: README's "never reachable" alert
    fires on the metrics file the daemon writes, installs or not, and stops firing once
    the store is back and the daemon committed."""
    (alert,) = [a for a in readme_alerts("never reachable") if " unless " in a]
    path = world.tmp / "k.prom"
    world.store.rename(world.tmp / "store.away")
    world.store.write_text("not a directory")
    d = world.daemon(*flags, "--quiet-ms", "50", "--metrics-file", str(path)).start()
    try:
        uv_install(venv.python, wheels, "alpha==1.0", env=world.env)

        def firing() -> Samples | None:
            samples = parse(path.read_text())[1] if path.exists() else {}
            return samples if fires(alert, samples) else None

        samples = eventually(firing, what="the alert firing on the metrics file")
        assert ("pkgckpt_last_commit_timestamp_seconds", frozenset({("key", "k")})) not in samples
        world.store.unlink()
        (world.tmp / "store.away").rename(world.store)
        eventually(lambda: world.generation() > 0, 120, "the commit once the store is back")
        eventually(lambda: not fires(alert, parse(path.read_text())[1]), what="the alert resolved")
        assert d.stop() == 0, d.output()
    finally:
        d.close()
