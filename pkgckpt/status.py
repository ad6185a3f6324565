"""The daemon's runtime status file, and `pkgckpt status`: what is recorded, what is not yet.

The daemon keeps `<runtime dir>/daemon-<digest of store and key>.json` up to date (pid,
start, last commit, pending changes, last error) through `StatusFile`; it is rewritten
when something in it changes, never on a timer. `collect()` reads it, the store
and a live scan.

The runtime directory may sit in a shared /tmp. A status file is read only when it and its
directory are this user's alone (0600 in 0700), and it names a live daemon only when that
pid is this user's process, started when the file says, running `pkgckpt daemon` for the
same store and key: a planted file can neither fake a daemon nor aim `snapshot`'s SIGHUP.
A daemon that found the usual directory someone else's keeps its file in the private
fallback, and stays there after that directory is gone: readers look in both.

One daemon per store and key: beside its status file the daemon holds an exclusive
`flock` on `daemon-<digest>.lock` for as long as it runs (the runtime directory is local,
the store may be NFS and takes no locks). A second daemon finds it held and refuses to
start (`AlreadyRunning`, exit 4): two would undo each other's `forget`. The lock is also
how a daemon whose runtime directory was removed is still found (`find_daemon`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple, TypeAlias

import msgspec

from . import __version__, checkpoint, inventory, manifest, metrics, rmatch
from .artifacts import quota
from .artifacts.summary import Summary, recall, summarize
from .artifacts.summary import lines as artifact_lines
from .checkpoint import now_iso
from .config import (
    Config,
    container_id,
    ensure_runtime_dir,
    fallback_runtime_dir,
    read_private,
    untrusted,
)
from .digest import sha256
from .discovery import Unreadable
from .errors import AlreadyRunning, PkgckptError, StoreUnavailable, Unreachable
from .manifest import Change, Environment, Manifest, Package, visible
from .store import Store, answered, open_store

if TYPE_CHECKING:
    # Reports are only encoded, which needs no annotations resolved: the daemon imports
    # this module and must not import restore.
    from .record import Holders
    from .restore.rebase import Rebase
    from .restore.venv import Stranded

Phase = Literal["starting", "watching", "stopping", "stopped"]


class EnvChanges(msgspec.Struct, frozen=True, kw_only=True):
    """Changes of one environment's record."""

    env: Environment
    changes: tuple[Change, ...]
    forgotten: tuple[str, ...] = ()
    """Names whose forget the store does not have yet."""


class DaemonState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The runtime status file of one daemon."""

    pid: int
    pid_start: int | None = None
    """The process start time (clock ticks since boot): tells a reused pid apart."""
    host: str
    version: str
    store: str
    key: str
    started: str
    updated: str
    phase: Phase = "starting"
    baseline: str | None = None
    """Where the baseline came from: its file, or "inferred" (none found, see checkpoint)."""
    generation: int | None = None
    committed: str | None = None
    """Time of the last commit this daemon made (or found unchanged)."""
    pending: int = 0
    """Changes seen but not on the store yet."""
    pending_roots: tuple[str, ...] = ()
    """Library roots changed and waiting for their quiet window."""
    pending_changes: tuple[EnvChanges, ...] | None = None
    """The changes the record holds and the store's manifest, as the daemon last read or
    wrote it, lacks: what `status` shows as pending while it cannot read the store. None:
    not known (the store not read yet, or found changed since) or not said (an older
    daemon)."""
    last_error: str | None = None
    """The last store or scan error, cleared by the next successful commit."""
    error_time: str | None = None
    rescans: int = 0
    """Full rescans done on request (SIGHUP): `snapshot` waits for this to move."""
    counters: metrics.Counters = msgspec.field(default_factory=metrics.Counters)
    """What the metrics count (`pkgckpt daemon --metrics-file`, `status --prometheus`)."""
    capturing: int = 0
    """Packages the artifact capture worker is capturing now (`snapshot` waits for 0)."""
    uncaptured: dict[str, str] = msgspec.field(default_factory=dict)
    """Packages this daemon could not capture (`name==version (env)`), and why."""
    capture_failed: tuple[str, ...] = ()
    """Of those, the ones whose capture failed for a reason that may pass (the store):
    retried later, or given up; `snapshot` exits 1 when any are left."""
    unread: str | None = None
    """Why the daemon has not read the store's manifest yet (the store not mounted, say):
    it records nothing, nor takes a request, until it has. None: it has read it."""
    tracked: tuple[str, ...] | None = None
    """The paths of the environments (prefixes, R libraries) the daemon tracks, those it
    discovered since its start included; None: not said (an older daemon)."""
    container: str | None = None
    """This container's run (`config.container_id`) the daemon ran in."""
    since: float | None = None
    """When the container's first daemon of this store and key started (time.time()): an
    entry written since in an environment with no baseline is the user's install
    (`checkpoint.Tracker`). A daemon started again (its supervisor, after a stop or a
    crash) keeps it while no daemon before it read the store (`first_start`), and with
    it what the user installed before its start. None: not said (an older daemon), its
    `started` then."""


_state_decoder = msgspec.json.Decoder(DaemonState)
_encoder = msgspec.json.Encoder(order="deterministic")


def _host() -> str:
    """socket.gethostname(), which is uname's node name, without importing socket (0.6 MB
    in the idle daemon)."""
    return os.uname().nodename


def store_identity(store: Path, base: Path | None = None) -> str:
    """The store as every process names it: absolute (relative to `base`, else to the
    working directory), without `.`, `..` or doubled slashes. `DIR/../store`, `store`
    run from its parent and `/store` are one store, with one daemon and one lock: a
    command that took another spelling for another store would write behind the daemon's
    back, and the daemon's next commit would undo it. Text only: the store (NFS) may be
    unreachable, and the daemon must still be found then."""
    path = os.path.normpath(base / store if base is not None else store.absolute())
    return "/" + path.lstrip("/")  # POSIX may keep a leading "//"; Linux reads it as "/"


def status_path(config: Config, directory: Path | None = None) -> Path:
    """Named by store and key: a daemon of another store with this key is not ours to ask.
    In `directory`, else in the configured runtime directory."""
    what = f"{store_identity(config.store)}\0{config.key}".encode()
    name = f"daemon-{sha256(what).hexdigest()[:24]}.json"
    return (config.runtime_dir if directory is None else directory) / name


def lock_name(config: Config) -> str:
    """The daemon lock's file name, beside its status file's."""
    return status_path(config).with_suffix(".lock").name


def directories(config: Config) -> list[Path]:
    """Where a daemon of this store and key may keep its status file: the runtime
    directory, then the private fallback, which a daemon keeps using once it went there
    (the usual one was someone else's at its start, or when it came back after a clean)."""
    found = [config.runtime_dir]
    with contextlib.suppress(RuntimeError):  # no home directory: no fallback either
        found.append(fallback_runtime_dir())
    return list(dict.fromkeys(found))


def process_start(pid: int) -> int | None:
    """Start time of `pid` from /proc (None when unknown)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def new_state(config: Config, since: float) -> DaemonState:
    stamp = now_iso()
    return DaemonState(
        container=container_id(),
        since=since,
        pid=os.getpid(),
        pid_start=process_start(os.getpid()),
        host=_host(),
        version=__version__,
        store=store_identity(config.store),
        key=config.key,
        started=stamp,
        updated=stamp,
    )


class StatusFile:
    """The daemon's status file: each write replaces it whole (temp file, rename), and the
    daemon's lock beside it (see the module docstring).

    Never fsynced: it describes a live process. A daemon killed leaves the last file whole
    (the rename is atomic without a sync); a machine that stops ends the process it
    describes, and whatever is left (an old file, a torn one, none: a runtime directory on
    tmpfs is empty) is a stopped daemon to `read_state` and `running`. The directory is
    checked once and held open; it is checked and opened again, and the lock taken there
    again, when it was removed. `directory` is where the file is now: the daemon takes
    the requests of `forget` and `revert` from there, where they find its status.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = status_path(config).name
        self.lock = lock_name(config)
        self._temp = f".{self.name}.{os.getpid()}.tmp"
        self._dir: int | None = None
        self._lock: int | None = None
        self.directory: Path | None = None

    def claim(self) -> Path:
        """At the daemon's start, before anything is written: take the lock of this store
        and key; the runtime directory it is in. Raises AlreadyRunning when another
        daemon holds it there or in the other directory readers look in (see
        `directories`), PkgckptError when no runtime directory can be had."""
        try:
            for other in directories(self.config):
                _probe(other, self.lock, self.config)
            self._open()
        except OSError as e:
            self.close()
            raise PkgckptError(f"cannot take the daemon lock: {e.strerror or e}") from e
        # Held here now, the lock may still be held elsewhere: by a daemon whose runtime
        # directory was removed (and made again), on the removed file.
        holder = lock_holder(self.config)
        if holder is not None:
            self.close()
            raise AlreadyRunning(
                f"a pkgckpt daemon (pid {holder}) already runs for store "
                f"{self.config.store} and key {self.config.key!r} (it holds their lock, "
                "on a runtime directory since removed): not starting another. Stop it "
                "first to start a new one"
            )
        assert self.directory is not None
        return self.directory

    def _open(self) -> None:
        """Open the runtime directory (made and checked) and hold the lock in it; nothing
        is kept open when the lock is another daemon's."""
        run = ensure_runtime_dir(self.config.runtime_dir)
        directory = os.open(run, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            lock = os.open(self.lock, flags, 0o600, dir_fd=directory)
            if self._lock is not None and _same_file(lock, self._lock):
                os.close(lock)  # the directory reopened after an error: held already
            else:
                try:
                    _flock(lock, run / self.lock, self.config)
                except BaseException:
                    os.close(lock)
                    raise
                if self._lock is not None:
                    os.close(self._lock)  # on a file removed with its directory
                self._lock = lock
        except BaseException:
            os.close(directory)
            raise
        self._dir, self.directory = directory, run

    def write(self, state: DaemonState) -> None:
        """Raises PkgckptError when the file cannot be written (AlreadyRunning when its
        directory was removed and another daemon holds the lock in the new one)."""
        data = _encoder.encode(state) + b"\n"
        try:
            if self._dir is not None and os.fstat(self._dir).st_nlink == 0:
                self._close_dir()  # removed (tmpfiles cleaning /tmp): made and checked anew
            if self._dir is None:
                self._open()
                assert self._dir is not None
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            # A name of this process's own, in a directory no one else may write in.
            fd = os.open(self._temp, flags, 0o600, dir_fd=self._dir)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.rename(self._temp, self.name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
        except OSError as e:
            if self._dir is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self._temp, dir_fd=self._dir)
            self._close_dir()
            raise PkgckptError(f"cannot write {self.name}: {e.strerror or e}") from e

    def _close_dir(self) -> None:
        if self._dir is not None:
            os.close(self._dir)
            self._dir = None

    def close(self) -> None:
        """Close the directory and let the lock go (the daemon's end)."""
        self._close_dir()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _flock(fd: int, path: Path, config: Config) -> None:
    """Lock `fd` exclusively, without waiting; AlreadyRunning when another holds it."""
    import fcntl  # the daemon's only lock: loaded here, not by every reader of the status

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        found = find_state(config)
        pid = f" (pid {found.state.pid})" if found is not None else ""
        raise AlreadyRunning(
            f"a pkgckpt daemon{pid} already runs for store {config.store} and key "
            f"{config.key!r} ({path} is locked): not starting another. `pkgckpt status` "
            "shows it; stop it first to start a new one"
        ) from None


def _probe(directory: Path, name: str, config: Config) -> None:
    """AlreadyRunning when a daemon holds the lock `name` in `directory`; creates nothing,
    and reads nothing in a directory that is not this user's alone."""
    try:
        if untrusted(directory) is not None:
            return
        fd = os.open(directory / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        _flock(fd, directory / name, config)
    finally:
        os.close(fd)  # held only for the look: the lock taken is the one in `_open`


class Found(NamedTuple):
    """A daemon's status and the runtime directory it was read from."""

    state: DaemonState
    directory: Path


def _read_in(config: Config, directory: Path) -> DaemonState | None:
    data = read_private(status_path(config, directory))
    if data is None:
        return None
    try:
        state = _state_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if store_identity(Path(state.store)) != store_identity(config.store) or state.key != config.key:
        return None
    return state


def find_state(config: Config) -> Found | None:
    """The status file of this store and key, and where it is: the first of `directories`
    that names a live daemon, else the first that has one. None when none has one that
    can be read and is this user's alone."""
    first = None
    for directory in directories(config):
        state = _read_in(config, directory)
        if state is None:
            continue
        if running(state, config):
            return Found(state, directory)
        first = first or Found(state, directory)
    return first


def read_state(config: Config) -> DaemonState | None:
    """The status of this store and key's daemon (see `find_state`), or None."""
    found = find_state(config)
    return found.state if found is not None else None


def first_start(config: Config) -> float | None:
    """When the daemons of this store and key that ran in this container before, none of
    which read the store, began (the first one's `since`), as the last one's status file
    says, stopped or crashed; None when there were none.

    One that read the store took what its environments held for the image's then, and
    recorded what came after: the next counts from its own start, as if first. Else a
    `chmod -R` of a library after it (which dates every entry anew) would make the next
    record all of it."""
    state = read_state(config)
    if state is None or state.container != container_id():
        return None  # a runtime directory that outlived its container: another run's
    if state.baseline is not None:
        return None  # it read the store (`baseline` is said once it has)
    return state.since


def made_since(state: DaemonState) -> float | None:
    """Since when an install in an environment with no baseline is the user's, to `state`'s
    daemon (see `DaemonState.since`)."""
    return state.since if state.since is not None else _since(state.started)


def lock_holder(config: Config, *, here: bool = False) -> int | None:
    """The pid of this user's process that holds the daemon lock of this store and key on
    a file since removed (its runtime directory removed); None when no process does.
    A lock on a file that is still there is another runtime directory's, another
    container's as far as this one can tell: its daemon is found by its status file, or
    is none of this one's business. `here`: one on the lock file in `directories` counts
    too, a daemon between taking its lock there and writing its status file beside it.

    Asked of the kernel (/proc/locks, and the holder's open file), not of the runtime
    directory: one removed and made again holds neither the running daemon's status file
    nor its lock, which the daemon still holds on the removed file until its next status
    write. The lock's name is a digest of the store and the key, so holding a removed file
    of that name is being their daemon.
    """
    name = lock_name(config)
    live = {str(d / name) for d in directories(config)} if here else set()
    try:
        with open("/proc/locks") as f:
            table = f.read().splitlines()
    except OSError:
        return None
    for line in table:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; a waiter's line has "->".
        if len(fields) < 6 or fields[1:4] != ["FLOCK", "ADVISORY", "WRITE"]:
            continue
        try:
            pid = int(fields[4])
            major, minor, inode = fields[5].split(":")
            held = (os.makedev(int(major, 16), int(minor, 16)), int(inode))
        except ValueError:
            continue
        if pid <= 0 or pid == os.getpid():
            continue
        try:
            if Path(f"/proc/{pid}").stat().st_uid != os.geteuid():
                continue
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for link in fds:
            try:
                target = str(link.readlink())
                if target not in live and (
                    not target.endswith(" (deleted)")
                    or Path(target.removesuffix(" (deleted)")).name != name
                ):
                    continue
                st = link.stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == held:
                return pid
    return None


def find_daemon(config: Config) -> Found | None:
    """The running daemon of this store and key, to hand a change to; None when none runs.

    One whose status file is in none of `directories` (its runtime directory removed,
    made again since) but which holds the lock (`lock_holder`) is woken with SIGHUP: its
    rescan writes the status file again, where readers look. It is waited for at most
    `shutdown_timeout` (at least 5 s); Unreachable when it does not show: whoever would
    write the store behind its back would have it undone by the daemon's next commit.
    A lock held in `directories` with no status file beside it is a daemon that has just
    taken it, at its start or moving into a runtime directory made again, and is about to
    write its status: waited for in the same way, never taken for no daemon.
    """
    found = find_state(config)
    if found is not None and running(found.state, config):
        return found
    pid = lock_holder(config, here=True)
    if pid is None:
        return None
    if is_daemon(pid, config):  # else never signalled, only waited for
        import signal

        # Gone since it was found (it was being stopped): the wait sees its lock released.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)
    wait = max(config.shutdown_timeout, 5.0)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(0.02)
        found = find_state(config)
        if found is not None and running(found.state, config):
            return found
        if lock_holder(config, here=True) is None:
            # It stopped, or wrote its status file since the look above.
            found = find_state(config)
            return found if found is not None and running(found.state, config) else None
    raise Unreachable(
        f"a pkgckpt daemon (pid {pid}) runs for store {config.store} and key "
        f"{config.key!r}, but its status file is in none of "
        f"{', '.join(map(str, directories(config)))} and it did not write it again within "
        f"{wait:.0f} s of a SIGHUP: nothing was changed. Run the command again once "
        f"`pkgckpt status` shows the daemon, or stop it first (kill -TERM {pid})"
    )


def _option(argv: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in `argv` (the last one), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1 :]
    return value


def is_daemon(pid: int, config: Config) -> bool:
    """Is `pid` this user's `pkgckpt daemon`, for `config`'s store and key as far as its
    command line says (settings from the environment or a file are not on it)?"""
    try:
        if Path(f"/proc/{pid}").stat().st_uid != os.geteuid():
            return False
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    argv = [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]
    # `pkgckpt daemon`, `python -m pkgckpt daemon`, `python .../pkgckpt/__main__.py daemon`.
    program = [
        i
        for i, a in enumerate(argv)
        if (Path(a).name == "pkgckpt" and (i == 0 or a != "pkgckpt" or argv[i - 1] == "-m"))
        or a.endswith("/pkgckpt/__main__.py")
    ]
    if not program or argv[program[0] + 1 : program[0] + 2] != ["daemon"]:
        return False
    store, key = _option(argv, "--store"), _option(argv, "--key")
    if store is not None:
        theirs = Path(store).expanduser()
        base = None
        if not theirs.is_absolute():
            # Relative to the directory it was started in, which it keeps.
            try:
                base = Path(f"/proc/{pid}/cwd").readlink()
            except OSError:
                return False
        if store_identity(theirs, base) != store_identity(config.store):
            return False
    return key is None or key == config.key


def running(state: DaemonState | None, config: Config) -> bool:
    """Is the daemon that wrote `state` alive (same pid, same process start time), and is
    that process this user's `pkgckpt daemon` for this store and key?"""
    if state is None or state.phase == "stopped" or state.host != _host():
        return False
    started = process_start(state.pid)
    if started is None or (state.pid_start is not None and started != state.pid_start):
        return False
    return is_daemon(state.pid, config)


# -- pkgckpt status --------------------------------------------------------------------


class _Out(msgspec.Struct, frozen=True, kw_only=True):
    """Report structs: every field in the JSON, defaults included, for scripts to rely on."""


class Rebuild(_Out, frozen=True, kw_only=True):
    """An R package restore reinstalls although its version is in place, and why."""

    name: str
    version: str
    reason: str


class EnvReport(_Out, frozen=True, kw_only=True):
    env: Environment
    added: tuple[Package, ...] = ()
    changed: tuple[Package, ...] = ()
    removed: tuple[Package, ...] = ()
    pending: tuple[Change, ...] = ()
    """Seen now but not checkpointed: what `snapshot` would add to the manifest. While
    the store cannot be read (`Report.store_unread`), the running daemon's changes not on
    the store yet (`Report.pending_from_daemon`), else nothing (see `pending_known`)."""
    pending_forgets: tuple[str, ...] = ()
    """While the store cannot be read, the names the running daemon was told to forget
    and the store does not know yet (`pending` leaves them out)."""
    unrestored: tuple[Change, ...] = ()
    """Recorded but not in place: what `restore` would do now (entries restore would
    refuse are left out; see `Report.refused`)."""
    cannot: tuple[str, ...] = ()
    """Recorded but not in place, and restore cannot install them here, why: an R package
    installed from a local file that is not here, with no artifact (`unrestored` leaves
    them out)."""
    error: str | None = None
    failing: tuple[manifest.Failing, ...] = ()
    """Recorded packages the last restores in a row failed (`pkgckpt forget` stops them)."""
    stale_locks: tuple[str, ...] = ()
    """R `00LOCK-*` directories left by interrupted installs: not waited for."""
    rebase: Rebase | None = None
    """The record read against this container's new image or interpreter, as restore
    would read it (None: the same ones)."""
    rebuild: tuple[Rebuild, ...] = ()
    """R packages in place at the recorded version but built for another R `major.minor`:
    restore installs them again."""
    recorded_as: Environment | None = None
    """The manifest's environment, when it is another path: an R library matched by its
    role (see `pkgckpt.rmatch`)."""
    no_baseline: bool = False
    """The baseline does not cover it: what it held when a process first scanned it is
    taken for the image's, so only changes a running daemon sees are recorded."""
    untracked: str | None = None
    """Recorded, but no environment tracked here is it: why restore skips its record
    (which it keeps)."""
    pending_known: bool = True
    """False: the store could not be read and no running daemon that tracks this
    environment said what the store lacks, so `pending` is empty without being known
    to be."""


class Checkpoint(_Out, frozen=True, kw_only=True):
    generation: int
    time: str | None = None
    age_seconds: float | None = None


class Report(_Out, frozen=True, kw_only=True):
    store: str
    key: str
    baseline: str | None = None
    checkpoint: Checkpoint | None = None
    environments: tuple[EnvReport, ...] = ()
    daemon_running: bool = False
    daemon: DaemonState | None = None
    daemon_unlisted: int | None = None
    """The pid of a daemon of this store and key that runs, holding its lock, though no
    status file names it (its runtime directory removed or made again since it started):
    `daemon` is then None, and `daemon_running` true."""
    store_error: str | None = None
    revert_back_to: int | None = None
    """The oldest kept generation: how far `pkgckpt revert` can go back."""
    r_untracked: str | None = None
    """R is installed but no R library is tracked: why."""
    rstudio_ignored: str | None = None
    """RStudio's rsession.conf is there but not read (`scan.rstudio`): which, and why."""
    refused: str | None = None
    """Why restore would refuse the manifest (an entry that fails its validation)."""
    baseline_from_daemon: bool = False
    """`baseline` is the one the running daemon reported, not one this command found."""
    artifacts: Summary | None = None
    """The artifact cache (None: switched off, or no manifest)."""
    store_unread: str | None = None
    """Why this command could not read the store's manifest (not mounted, say): then
    `checkpoint` is unknown, not none, and the environments' recorded lists are empty."""
    last_commit: Checkpoint | None = None
    """The generation the daemon of this store and key last committed (or read), from its
    status file, whether it still runs or not: what the store held as far as this
    container knows when the store cannot be read. `time` is that of its last commit,
    None when it committed nothing."""
    pending_from_daemon: bool = False
    """The store could not be read: `pending` is the running daemon's changes not on the
    store yet (`DaemonState.pending_changes`), not this command's scan."""


def _since(stamp: str) -> float | None:
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(stamp).timestamp()
    return None


def _age(stamp: str | None) -> float | None:
    since = None if stamp is None else _since(stamp)
    return None if since is None else round(time.time() - since, 1)


def _restore_would(live: Mapping[str, Package], delta: manifest.Delta) -> tuple[Change, ...]:
    """What restore would do now: the recorded packages not in place, nothing else, and
    none that restore's validation refuses."""
    from .validate import delta_problems

    def valid(one: manifest.Delta) -> bool:
        return next(delta_problems(one), None) is None

    # Each in its own part: a removal's version may be one an addition's may not (an
    # image's `1.1build1`, see validate.py).
    names = {
        p.name
        for p in (*delta.added, *delta.changed)
        if valid(manifest.Delta(env=delta.env, added=(p,)))
    }
    names |= {p.name for p in delta.removed if valid(manifest.Delta(env=delta.env, removed=(p,)))}
    have = {n: live[n] for n in names if n in live}
    want = {p.name: p for p in (*delta.added, *delta.changed) if p.name in names}
    for name, p in want.items():
        h = have.get(name)
        # What restore takes for in place, though written down otherwise (a directory and
        # its subdirectory, reinstalled as the joined directory; `manifest.same_source`).
        if (
            h is not None
            and (h.version, h.build) == (p.version, p.build)
            and manifest.same_source(p.source, h.source)
        ):
            have[name] = p
    return tuple(manifest.diff(have, want, delta.env.kind))


def _cannot(delta: manifest.Delta, unrestored: tuple[Change, ...]) -> dict[str, str]:
    """Name -> why restore cannot install it here, of the installs in `unrestored`: as
    restore's plan says of an R package from a local file (`restore.r`), which status
    reads without restore's modules."""
    from .localsource import not_here

    recorded = {p.name: p for p in (*delta.added, *delta.changed)}
    out = {}
    for c in unrestored:
        p = recorded.get(c.name)
        if c.action == "remove" or p is None or p.artifact is not None:
            continue
        source = p.source
        gone = not_here(source.path) if isinstance(source, manifest.LocalSource) else None
        if gone is not None:
            out[p.name] = visible(f"{p.name} {p.version}: {gone}")
    return out


def _rebuild(
    live: Mapping[str, Package], delta: manifest.Delta, env: Environment
) -> tuple[Rebuild, ...]:
    """The recorded R packages in place at their version but built for another R."""
    found = []
    for p in (*delta.added, *delta.changed):
        have = live.get(p.name)
        why = rmatch.stale_build(have, env)
        if have is not None and have.version == p.version and why is not None:
            found.append(Rebuild(name=p.name, version=p.version, reason=why))
    return tuple(sorted(found, key=lambda r: r.name))


def _recorded(delta: manifest.Delta, env: Environment) -> EnvReport:
    """What the manifest records for an environment, reported under `env`."""
    return EnvReport(
        env=env,
        added=delta.added,
        changed=delta.changed,
        removed=delta.removed,
        failing=delta.failing,
    )


def _rebase(
    config: Config,
    target: inventory.Target,
    baseline: manifest.Baseline | None,
    delta: manifest.Delta,
    live: Mapping[str, Package],
    found: list[inventory.Target],
) -> Rebase | None:
    """How restore would rebase `delta` here, when this container runs another image or
    interpreter than the record's."""
    if delta.is_empty():
        return None
    if target.env.kind == "r":
        from .restore.rimage import rebase_r

        return rebase_r(delta, target, found, baseline, live, config)
    if target.env.kind == "conda":
        from .restore import _conda_rebase, _image, taken_here

        return _conda_rebase(
            delta, _image(baseline, target, live), live, taken_here=taken_here(baseline)
        )
    if target.env.kind != "python":
        return None
    from .restore import _beneath, _image, taken_here
    from .restore.rebase import needed, rebase
    from .validate import canonical

    now = {canonical(p.name): p for p in live.values()}
    image = _image(baseline, target, now)
    here = taken_here(baseline)
    if image is None or not needed(delta, target.env, image, now, taken_here=here):
        return None
    beneath = _beneath(target, found)
    under = beneath.scan().packages if beneath is not None else ()
    now = {**{canonical(p.name): p for p in under}, **now}
    return rebase(delta, target, image, now, config, beneath, taken_here=here, ask_index=False)


def _artifacts(
    store: Store, config: Config, body: manifest.Body, reasons: Mapping[str, str] | None
) -> Summary:
    """The artifacts' summary, or why the store (or the shared pool) did not give it."""
    try:
        return answered(
            STORE_SECONDS, lambda: summarize(store, config, body, reasons), config.store
        )
    except PkgckptError as e:
        return Summary(quota=config.artifact_quota, error=str(e))


STORE_SECONDS = 10.0
"""How long `status` waits for each answer of the store: a person is waiting, and what is
local (the daemon, the libraries) is worth showing while the store does not answer."""


_FromStore: TypeAlias = tuple[Store | None, Manifest | None, list[int], str | None, str | None]


def _from_store(config: Config) -> _FromStore:
    """The store, its manifest, its kept generations, the store's error, and why the
    manifest could not be read; each call waited for `STORE_SECONDS` at most."""
    try:
        # Opening looks at the root too (a squashed store's other keys, with `store_uid`).
        # A store refused or a key misspelt is the command's error, as it always was.
        store = answered(STORE_SECONDS, lambda: open_store(config), config.store)
    except StoreUnavailable as e:
        return None, None, [], str(e), str(e)
    try:
        recorded = answered(STORE_SECONDS, store.read, config.store)
    except PkgckptError as e:
        return store, None, [], str(e), str(e)
    try:
        return store, recorded, answered(STORE_SECONDS, store.generations, config.store), None, None
    except PkgckptError as e:
        return store, recorded, [], str(e), None


def collect(config: Config, stored: _FromStore | None = None) -> Report:
    """Everything `pkgckpt status` shows; reads only, never writes or takes a baseline.
    `stored`: what `_from_store` gave the caller, read once for both."""
    store, recorded, kept, store_error, unread = stored or _from_store(config)
    baseline = inventory.load_baseline(config)
    state = read_state(config)
    alive = running(state, config)
    # As the running daemon reads them: a venv made since its start is no image's.
    tracker = checkpoint.Tracker(
        baseline, recorded, made_since(state) if alive and state is not None else None
    )
    envs: list[EnvReport] = []
    recorded_envs = recorded.body.deltas() if recorded is not None else ()
    elsewhere = {checkpoint.env_key(d.env): d for d in recorded_envs}
    unreadable: list[Unreadable] = []
    r_tracking = inventory.r_libraries(config)
    found = inventory.targets(config, unreadable=unreadable, r=r_tracking)
    inventory.expect(found, baseline)
    here = [t.env for t in found]
    latest = [rmatch.latest(d) for d in recorded_envs]
    matched = rmatch.pair([d.env for d in recorded_envs], here, latest)
    paired = {j: recorded_envs[i] for i, j in matched.items()}
    # What an older record of an R library's role still owes it, as restore plans it.
    owed = {matched[i]: d for i, (_, d) in rmatch.carry_on(recorded_envs, here, matched).items()}
    for j, target in enumerate(found):
        env = target.env
        mine = paired.get(j)
        delta = (elsewhere.pop(checkpoint.env_key(mine.env), None) if mine else None) or (
            manifest.Delta(env=env)
        )
        report = _recorded(delta, env)
        if delta.env.path != env.path:
            report = msgspec.structs.replace(report, recorded_as=delta.env)
        try:
            obs = checkpoint.observe(target)
        except PkgckptError as e:
            envs.append(msgspec.structs.replace(report, error=str(e)))
            continue
        pending = tuple(tracker.observe(env, obs))
        if any(manifest.same_env(env, e) for e in tracker.inferred):
            report = msgspec.structs.replace(report, no_baseline=True)
        planned = owed.get(j, delta)
        unrestored = _restore_would(obs.packages, planned)
        cannot = _cannot(planned, unrestored)
        unrestored = tuple(c for c in unrestored if c.name not in cannot)
        rebase = _rebase(config, target, baseline, planned, obs.packages, found)
        if rebase is not None:
            acting = {d.name for d in rebase.decisions if d.action in ("install", "remove")}
            unrestored = tuple(c for c in unrestored if c.name in acting)
            report = msgspec.structs.replace(report, rebase=rebase)
        venv = _stranded(Path(env.path)) if env.kind == "python" and mine else None
        if venv is not None:  # named by --env: tracked all the same, from its files
            report = msgspec.structs.replace(report, error=venv.describe())
        stale = tuple(sorted(target.last.stale))
        envs.append(
            msgspec.structs.replace(
                report,
                pending=pending,
                unrestored=unrestored,
                cannot=tuple(cannot.values()),
                stale_locks=stale,
                rebuild=_rebuild(obs.packages, planned, env),
            )
        )
    for u in unreadable:
        env = Environment(kind="python", path=u.path)
        why = f"{u.reason} (named by {u.origin})"
        venv = _kernel_venv(Path(u.path), elsewhere)
        if venv is not None:
            env = Environment(kind="python", path=str(venv.prefix))
            why = f"{venv.describe()} (named by {u.origin})"
        held = elsewhere.pop(checkpoint.env_key(env), None)
        report = _recorded(held, held.env) if held else EnvReport(env=env)
        envs.append(msgspec.structs.replace(report, error=why))
    if elsewhere:
        from .restore import unpaired

        here = [t.env for t in found]
        envs += [
            msgspec.structs.replace(_recorded(d, d.env), untracked=unpaired(d.env, here))
            for d in elsewhere.values()
        ]
    if unread is not None:
        envs = _outage(envs, state if alive else None)
    elif alive and state is not None and state.pending_changes:
        envs = _held(envs, state.pending_changes)
    unlisted = None
    if not alive:
        # Read-only: a daemon that holds the lock is shown, not woken (`find_daemon`).
        holder = lock_holder(config)
        unlisted = holder if holder is not None and is_daemon(holder, config) else None
    if store_error is None and alive and state is not None:
        store_error = state.last_error
    refused = None
    if recorded is not None:
        from .validate import check_body

        try:
            check_body(recorded.body)
        except PkgckptError as e:
            refused = str(e)
    cache = None
    if config.artifacts and recorded is not None and store is not None:
        reasons = state.uncaptured if alive and state is not None else recall(config)
        cache = _artifacts(store, config, recorded.body, reasons)
    shown = str(inventory.baseline_path(config)) if baseline is not None else None
    from_daemon = shown is None and alive and state is not None and state.baseline is not None
    return Report(
        store=str(config.store / config.key),
        key=config.key,
        baseline=state.baseline if from_daemon and state is not None else shown,
        baseline_from_daemon=from_daemon,
        refused=refused,
        checkpoint=Checkpoint(
            generation=recorded.generation, time=recorded.time, age_seconds=_age(recorded.time)
        )
        if recorded is not None
        else None,
        environments=tuple(envs),
        daemon_running=alive or unlisted is not None,
        daemon=None if unlisted is not None else state,
        daemon_unlisted=unlisted,
        store_error=store_error,
        revert_back_to=min(kept) if kept else None,
        r_untracked=r_tracking.untracked,
        rstudio_ignored=_rstudio_ignored(r_tracking),
        artifacts=cache,
        store_unread=unread,
        last_commit=Checkpoint(
            generation=state.generation, time=state.committed, age_seconds=_age(state.committed)
        )
        if state is not None and state.generation is not None
        else None,
        pending_from_daemon=unread is not None and any(e.pending_known for e in envs),
    )


def _outage(envs: list[EnvReport], daemon: DaemonState | None) -> list[EnvReport]:
    """The environments' pending changes when the store could not be read: the scan
    compared with no record would list everything ever installed, as if nothing were on
    the store. The running `daemon` knows what the store lacks in what it tracks."""
    held = daemon.pending_changes if daemon is not None else None
    tracked = daemon.tracked if daemon is not None else None
    theirs = {checkpoint.env_key(p.env): p for p in held or ()}
    out = []
    for e in envs:
        known = held is not None and (tracked is None or e.env.path in tracked)
        mine = theirs.get(checkpoint.env_key(e.env)) if known else None
        out.append(
            msgspec.structs.replace(
                e,
                pending=mine.changes if mine is not None else (),
                pending_forgets=mine.forgotten if mine is not None else (),
                pending_known=known,
            )
        )
    return out


def _held(envs: list[EnvReport], held: tuple[EnvChanges, ...]) -> list[EnvReport]:
    """What the running daemon holds and the store did not take (read-only, full), that
    status's own scan cannot find: its forgets, which leave nothing to scan, and its
    uninstalls, which one scan takes for recorded packages a restore has not made yet
    (only the daemon saw them go). Installs pending are found by that scan."""
    theirs = {checkpoint.env_key(p.env): p for p in held}
    out = []
    for e in envs:
        mine = theirs.get(checkpoint.env_key(e.env))
        if mine is None:
            out.append(e)
            continue
        seen = {c.name for c in e.pending}
        gone = tuple(c for c in mine.changes if c.action == "remove" and c.name not in seen)
        names = {c.name for c in gone}
        out.append(
            msgspec.structs.replace(
                e,
                pending=(*e.pending, *gone),
                pending_forgets=mine.forgotten,
                unrestored=tuple(c for c in e.unrestored if c.name not in names),
            )
        )
    return out


def _stranded(prefix: Path) -> Stranded | None:
    """The venv at `prefix` when its interpreter is gone or moved: `restore` makes it again
    (`restore.venv`). Asked only of what the record holds, which `collect` checks with
    restore's validation anyway: the import costs nothing more."""
    from .restore.venv import stranded

    return stranded(prefix)


def _kernel_venv(
    python: Path, recorded: Mapping[checkpoint.EnvKey, manifest.Delta]
) -> Stranded | None:
    """The stranded venv whose own link a kernel's missing `python` is, when the record
    holds it."""
    if not recorded:
        return None
    from .restore.venv import kernel_prefix

    prefix = kernel_prefix(python)
    if prefix is None:
        return None
    if checkpoint.env_key(Environment(kind="python", path=str(prefix))) not in recorded:
        return None
    return _stranded(prefix)


def _rstudio_ignored(r: inventory.RTracking) -> str | None:
    """Why RStudio sessions' user library is not tracked though rsession.conf is there:
    only where R was asked for its libraries, as the daemon asks it."""
    if r.info is None:
        return None
    from .scan.rstudio import read

    return read(os.environ)[1]


def to_json(report: Report) -> bytes:
    return msgspec.json.format(_encoder.encode(report), indent=2) + b"\n"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _wrapped(label: str, items: list[str]) -> list[str]:
    """`items` after `label`, wrapped to the terminal (100 columns when not one), each
    continuation line indented under the first item; an item is never split."""
    import shutil
    import textwrap

    if not items:
        return []
    width = max(60, shutil.get_terminal_size((100, 24)).columns)
    head = f"    {label:<9}"
    # Non-breaking spaces inside an item keep "name version" together.
    text = ", ".join(i.replace(" ", "\xa0") for i in items)
    lines = textwrap.wrap(
        text,
        width=width,
        initial_indent=head,
        subsequent_indent=" " * len(head),
        break_long_words=False,
        break_on_hyphens=False,
    )
    return [line.replace("\xa0", " ") for line in lines]


def _pkgs(label: str, packages: tuple[Package, ...]) -> list[str]:
    return _wrapped(label, [f"{p.name} {p.version}" for p in packages])


def _changes(label: str, changes: tuple[Change, ...], forgets: tuple[str, ...] = ()) -> list[str]:
    words = []
    for c in changes:
        versions = " -> ".join(v for v in (c.old, c.new) if v)
        words.append(f"{c.action} {c.name} {versions}")
    words += (f"forget {name}" for name in forgets)
    return _wrapped(label, words)


def _holders(report: Report) -> Holders:
    """`record.holders` of the report's environments, under the record's paths (an R
    library matched by its role is recorded under another)."""
    from .record import holders

    return holders(
        (o.recorded_as or o.env, (*o.added, *o.changed, *o.removed)) for o in report.environments
    )


def _failing(e: EnvReport, held: Holders) -> list[str]:
    """The failing packages of `e`, each with the forget that stops it
    (`record.forget_command`; `held`: `_holders`, made once per report)."""
    if not e.failing:
        return []
    from .record import forget_command, printable

    lines = []
    for f in e.failing:
        command = forget_command(f.name, e.recorded_as or e.env, held)
        lines.append(
            f"    failing  {visible(f.name)} {visible(f.version)}: {f.count} restore(s) "
            f"in a row; `{command}` stops retrying it"
        )
        lines += [f"             | {printable(line)}" for line in f.reason.splitlines()[-5:]]
    return lines


def _last_commit(report: Report) -> str:
    """The daemon's last generation, said while the store cannot be read."""
    c = report.last_commit
    assert c is not None
    gone = "" if report.daemon_running else " (not running)"
    if c.time is None:
        return f"the daemon{gone} read generation {c.generation} and committed none since"
    age = f", {_duration(c.age_seconds)} ago" if c.age_seconds is not None else ""
    return f"the daemon's last commit{gone}: generation {c.generation} ({c.time}{age})"


def to_text(report: Report) -> str:
    lines = [f"store:      {report.store}"]
    if report.store_unread is not None:
        lines.append(f"checkpoint: unknown, the store cannot be read now: {report.store_unread}")
        if report.last_commit is not None:
            lines.append(f"            {_last_commit(report)}")
    elif report.checkpoint is None:
        lines.append("checkpoint: none yet")
    else:
        c = report.checkpoint
        age = f", {_duration(c.age_seconds)} ago" if c.age_seconds is not None else ""
        lines.append(f"checkpoint: generation {c.generation} ({visible(str(c.time))}{age})")
    if report.checkpoint is not None and report.revert_back_to == report.checkpoint.generation:
        lines.append(
            f"revert:     nothing to go back to: generation {report.revert_back_to} is the "
            "only one kept"
        )
    elif report.revert_back_to is not None:
        lines.append(
            f"revert:     back to generation {report.revert_back_to} "
            "(`pkgckpt history` lists the changes)"
        )
    baseline = report.baseline or "none found"
    if report.baseline_from_daemon:
        baseline += " (the daemon's)"
    lines.append(f"baseline:   {baseline}")
    d = report.daemon
    if report.daemon_running and d is not None:
        detail = f"pid {d.pid}, {d.phase} since {d.started}"
        if d.pending_roots:
            # What `status` lists as pending now, the daemon reads only once the library is
            # quiet: without this, its line would deny a change the lines below show.
            detail += ", a change under way: read once its library is quiet"
        if d.pending:
            detail += f", {d.pending} change(s) not on the store yet"
        lines.append(f"daemon:     running ({detail})")
    elif report.daemon_unlisted is not None:
        pid = report.daemon_unlisted
        lines.append(
            f"daemon:     running (pid {pid}), but its status file is gone: its runtime "
            f"directory was removed since it started; it writes it again at its next "
            f"change, or at once on `kill -HUP {pid}`"
        )
    else:
        lines.append("daemon:     not running")
    if report.store_error and report.store_error != report.store_unread:
        lines.append(f"last error: {report.store_error}")
    if report.r_untracked:
        lines.append(f"R:          installed, but no R library is tracked: {report.r_untracked}")
    if report.rstudio_ignored:
        lines.append(
            f"RStudio:    {report.rstudio_ignored}; the user library it gives its "
            "sessions (r-libs-user) is not tracked"
        )
    if report.artifacts is not None:
        lines += artifact_lines(report.artifacts)
    if report.refused:
        lines.append("restore:    would refuse this manifest, nothing would be installed:")
        lines += [f"    {line.strip()}" for line in report.refused.splitlines()[1:]]
    # What the running daemon watches, as its status file names it (None: all, or not said).
    said = report.daemon.tracked if report.daemon_running and report.daemon else None
    held = _holders(report) if any(e.failing for e in report.environments) else {}
    for e in report.environments:
        lines.append(f"{e.env.kind} {e.env.where()}:")
        if e.recorded_as is not None:
            lines.append(f"    ({rmatch.moved(e.recorded_as, e.env)})")
        if e.error:
            lines.append(f"    error: {e.error}")
        if e.untracked:
            lines.append(f"    restore skips it: {e.untracked}")
            if said is not None and e.env.path in said:
                # Found at its start or since (a kernelspec removed after): it does not
                # let go of an environment while it runs.
                lines.append("    the running daemon found it earlier and records its changes")
        if e.no_baseline:
            flag = "--r-lib" if e.env.kind == "r" else "--env"
            who = (
                "a running daemon records the changes it sees"
                if said is None or e.env.path in said
                else f"the running daemon does not track it: `pkgckpt snapshot {flag} "
                f"{e.env.path}` records what is installed there"
            )
            lines.append(
                "    no baseline: what it held when first scanned counts as the image's, not "
                f"recorded; {who}"
            )
        for lock in e.stale_locks:
            from .scan.r import remove_lock_command

            lines.append(
                f"    stale lock {lock} (an interrupted install; not waited for), "
                f"remove it: {remove_lock_command(Path(lock))}"
            )
        unknown = "unknown: the store cannot be read"
        body = [
            *([f"    recorded {unknown}"] if report.store_unread is not None else []),
            *_pkgs("added", e.added),
            *_pkgs("changed", e.changed),
            *_pkgs("removed", e.removed),
            *_changes("pending", e.pending, e.pending_forgets),
            *([] if e.pending_known else [f"    pending  {unknown}"]),
            *_changes("restore", e.unrestored),
            *(f"    cannot   {why}" for why in e.cannot),
            *_wrapped("rebuild", [f"{r.name} {r.version} ({r.reason})" for r in e.rebuild]),
            *_failing(e, held),
            *(e.rebase.render() if e.rebase is not None else ()),
        ]
        lines.extend(body or ["    nothing recorded"])
    from .record import printable

    # Paths and reasons come from environments.txt, kernel.json, the store and the daemon's
    # status file: none of them may move the terminal's cursor or colour its text.
    return printable("\n".join(lines) + "\n")


def to_prometheus(config: Config) -> str:
    """`status --prometheus`: the metrics the daemon writes, from its status file (or, with
    no daemon status, from the store's manifest). With no daemon running, the changes not
    on the store are those `status` finds by its scan: a stopped daemon's count is of its
    stop, and none at all is no count of nothing."""
    state = read_state(config)
    restore = metrics.read_restore(config)
    if state is not None:
        pending = state.pending if running(state, config) else _pending(config)
        if pending is None:
            pending = state.pending  # not known now: the count at the daemon's stop
        return metrics.render(config.key, state.generation, pending, state.counters, restore)
    stored = None
    with contextlib.suppress(PkgckptError):  # a store refused: `collect` would be refused too
        stored = _from_store(config)
    if stored is None:
        return metrics.render(config.key, None, None, metrics.Counters(), restore)
    pending = _pending(config, stored)
    store, recorded = stored[:2]
    if store is None or recorded is None:
        return metrics.render(config.key, None, pending, metrics.Counters(), restore)
    counters = metrics.Counters(tracked=metrics.tracked(recorded.body))
    if config.artifacts:
        with contextlib.suppress(PkgckptError):
            counters.artifact_bytes = answered(
                STORE_SECONDS, lambda: quota.used(store), config.store
            )
    return metrics.render(config.key, recorded.generation, pending, counters, restore)


def _pending(config: Config, stored: _FromStore | None = None) -> int | None:
    """The changes `status` lists as pending now (`collect`, given `stored`); None when it
    cannot tell (the store or an environment could not be read, a baseline is refused):
    the other metrics are still printed."""
    try:
        report = collect(config, stored)
    except PkgckptError:
        return None
    if not all(e.pending_known for e in report.environments):
        return None
    return sum(len(e.pending) for e in report.environments)
