"""examples/entrypoint.sh as a container would run it: restore (bounded), the daemon in the
background, the notebook server in front, SIGTERM forwarded so the daemon flushes.

The slow test runs the real pkgckpt; the others run the real script with a `pkgckpt` (and
a `timeout`) on PATH that record what the script asked of them."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_kit import World, eventually, pins, uv_install
from restore_kit import put_manifest, slow_sdist
from wheelhouse import Dist, build_wheel, make_venv

from pkgckpt.config import Config
from pkgckpt.manifest import Body, Delta, Environment, Package
from pkgckpt.metrics import record_restore
from pkgckpt.status import status_path

ENTRYPOINT = Path(__file__).resolve().parent.parent / "examples" / "entrypoint.sh"
RSTUDIO_RESTORE = Path(__file__).resolve().parent.parent / "deploy" / "rstudio" / "pkgckpt-restore"

SERVER = """\
import signal, sys, time
open(sys.argv[1], "w").close()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["missing-package", "hanging-build"])
def test_entrypoint_survives_a_failed_restore_and_flushes_on_sigterm(
    tmp_path: Path, failure: str
) -> None:
    """A failed or hanging restore still starts the server; SIGTERM flushes the daemon.

    The restore fails on a package nowhere to be found, or hangs on a build that never
    ends (cut by the restore timeout). SIGTERM to the entrypoint stops the server and the
    daemon, whose flush puts the last install in the manifest."""
    world = World.make(tmp_path)
    wheels = tmp_path / "wheels"
    build_wheel(Dist("good-one", "1.0"), wheels)
    build_wheel(Dist("late", "1.0"), wheels)
    if failure == "hanging-build":
        slow_sdist("stuck", "1.0", wheels, tmp_path / "stuck.pid")
    venv = make_venv(tmp_path / "venv", with_pip=False)
    image = world.image(venv.prefix)
    bad = "stuck" if failure == "hanging-build" else "nowhere"
    added = (Package(name="good-one", version="1.0"), Package(name=bad, version="1.0"))
    env_ = Environment(kind="python", path=str(venv.prefix))
    put_manifest(world.store, world.key, Body(environments=(Delta(env=env_, added=added),)))

    variables = {
        **image,
        "PKGCKPT_INSTALLER": "uv",
        "PKGCKPT_NO_INDEX": "1",
        "PKGCKPT_FIND_LINKS": str(wheels),
        "PKGCKPT_QUIET_MS": "60000",  # nothing is committed before SIGTERM
        "PKGCKPT_RESTORE_TIMEOUT": "5",
    }
    started = tmp_path / "server-started"
    server = tmp_path / "server.py"
    server.write_text(SERVER)
    log = tmp_path / "entrypoint.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(ENTRYPOINT), sys.executable, str(server), str(started)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=variables,
        )  # fmt: skip
    try:
        eventually(started.exists, timeout=120, what="the server to start")
        if failure == "missing-package":  # the hanging build uses up the whole timeout
            assert list(venv.site_packages.glob("good_one-1.0.dist-info"))
        where = Config(store=world.store, key=world.key, runtime_dir=tmp_path / "run" / "pkgckpt")
        status = status_path(where)
        eventually(lambda: status.exists() and '"watching"' in status.read_text(), what="daemon")
        uv_install(venv.python, wheels, "late==1.0", env=world.env)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "some packages could not be restored" in text, text
    found = world.manifest()
    assert found is not None
    (delta,) = found.body.environments
    assert pins(delta.added) == sorted([f"{bad}==1.0", "good-one==1.0", "late==1.0"]), text
    assert "stopped: every change is on the store" in text


@pytest.mark.slow
def test_a_server_that_exits_at_once_lets_the_daemon_start_and_stop_cleanly(
    tmp_path: Path,
) -> None:
    """A server that exits at once (a wrong command; here `true`): the entrypoint stops
    the daemon only once the daemon can take SIGTERM, so it checkpoints what it found (an
    install made before the container's start) and exits 0. It was SIGTERMed in its
    interpreter's start, died of it (143), and the entrypoint said changes may be lost."""
    world = World.make(tmp_path)
    wheels = tmp_path / "wheels"
    build_wheel(Dist("early", "1.0"), wheels)
    venv = make_venv(tmp_path / "venv", with_pip=False)
    image = world.image(venv.prefix)
    uv_install(venv.python, wheels, "early==1.0", env=world.env)
    done = subprocess.run(
        ["bash", str(ENTRYPOINT), "true"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=image, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "entrypoint:" not in done.stderr, done.stderr
    assert "stopped: every change is on the store" in done.stderr, done.stderr
    found = world.manifest()
    assert found is not None, done.stderr
    (delta,) = found.body.environments
    assert pins(delta.added) == ["early==1.0"], done.stderr


def test_the_real_restore_is_bounded_by_a_jitter_from_a_config_file(tmp_path: Path) -> None:
    """The real pkgckpt, `jitter = 600` in a config file, a restore timeout of 5 s:
    timeout(1) allows 5 + 600 + 30 s (it allowed 35, and cut off the restores that drew a
    wait over 35 s), and the restore runs within it. The container restored once already,
    so this restore does not wait."""
    world = World.make(tmp_path)
    venv = make_venv(tmp_path / "venv", with_pip=False)
    (tmp_path / "c.toml").write_text("jitter = 600\n")
    record_restore(Config(store=world.store, key=world.key, runtime_dir=world.runtime), 1, {})
    shim = tmp_path / "shim"
    shim.mkdir()
    timeout = shutil.which("timeout")
    assert timeout is not None, "timeout(1) (coreutils) is not installed"
    (shim / "timeout").write_text(SHIM_TIMEOUT.format(timeout=timeout))
    (shim / "timeout").chmod(0o755)
    (tmp_path / "server.py").write_text(PLAIN_SERVER)
    bindir = str(Path(os.path.realpath(sys.executable)).parent)
    variables = {
        **world.env,
        "PATH": os.pathsep.join([str(shim), bindir, world.env["PATH"]]),
        "SHIM_DIR": str(shim),
        "PKGCKPT_CONFIG": str(tmp_path / "c.toml"),
        "PKGCKPT_ENV": str(venv.prefix),
        "PKGCKPT_STORE": str(world.store),
        "PKGCKPT_KEY": world.key,
        "PKGCKPT_RESTORE_TIMEOUT": "5",
    }
    done = subprocess.run(
        ["bash", str(ENTRYPOINT), sys.executable, str(tmp_path / "server.py"), "0"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=variables, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (shim / "calls").read_text().splitlines() == [
        "timeout --kill-after=10 30 pkgckpt restore --timeout 5 --print-bound",
        "timeout --kill-after=10 645 pkgckpt restore --timeout 5",
    ]
    # The server exits at once: the daemon may be stopped before it could start.
    said = [line for line in done.stderr.splitlines() if line.startswith("entrypoint:")]
    assert not [line for line in said if "restore" in line], done.stderr
    assert "nothing to restore" in done.stdout, done.stdout


# A stand-in for pkgckpt: `restore --print-bound` is the real one's answer (or
# $SHIM_BOUND, when set); `restore`
# logs its arguments and exits $SHIM_RESTORE_EXIT; `daemon` runs until SIGTERM, and logs
# whether the server had exited by then.
SHIM_PKGCKPT = """\
#!/bin/sh
log=$SHIM_DIR/calls
case $1 in
restore)
    case " $* " in *" --print-bound "*)
        if [ -n "${SHIM_BOUND+set}" ]; then printf '%s\n' "$SHIM_BOUND"; exit 0; fi
        exec {python} -m pkgckpt "$@" ;;
    esac
    echo "restore $*" >>"$log"
    exit "${SHIM_RESTORE_EXIT:-0}" ;;
daemon)
    echo daemon >>"$log"
    stop() {
        if [ -e "$SHIM_DIR/server-exited" ]; then echo "daemon: TERM after the server exited"
        else echo "daemon: TERM while the server runs"; fi >>"$log"
        exit 0
    }
    trap stop TERM
    trap 'echo "daemon: INT" >>"$log"; exit 0' INT
    while :; do sleep 0.05; done ;;
esac
exit 64
"""

# timeout(1), logging its arguments before it runs the command.
SHIM_TIMEOUT = """\
#!/bin/sh
echo "timeout $*" >>"$SHIM_DIR/calls"
exec {timeout} "$@"
"""

# A notebook server with Python's default SIGINT handling (KeyboardInterrupt), as
# jupyter without a terminal; it says when it is up and, however it ends, that it exited.
PLAIN_SERVER = """\
import os, signal, sys, time
shim = os.environ["SHIM_DIR"]
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
try:
    open(os.path.join(shim, "server-started"), "w").close()
    time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 600)
except BaseException:
    time.sleep(0.5)  # a shutdown takes a while (kernels stop, files are saved)
    raise
finally:
    open(os.path.join(shim, "server-exited"), "w").close()
"""


def shimmed(tmp_path: Path, **variables: str) -> tuple[dict[str, str], Path]:
    """The environment to run the entrypoint in with the stand-ins, and their log."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "pkgckpt").write_text(SHIM_PKGCKPT.replace("{python}", sys.executable))
    timeout = shutil.which("timeout")
    assert timeout is not None, "timeout(1) (coreutils) is not installed"
    (shim / "timeout").write_text(SHIM_TIMEOUT.format(timeout=timeout))
    for tool in ("pkgckpt", "timeout"):
        (shim / tool).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PKGCKPT_")}
    env.update(
        PATH=f"{shim}{os.pathsep}{env['PATH']}",
        SHIM_DIR=str(shim),
        XDG_CONFIG_HOME=str(tmp_path / "config"),  # not this machine's config file
        **variables,
    )
    return env, shim / "calls"


def run_entrypoint(
    tmp_path: Path, **variables: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """The entrypoint with a server that exits at once: its result and the calls made."""
    env, calls = shimmed(tmp_path, **variables)
    server = tmp_path / "server.py"
    server.write_text(PLAIN_SERVER)
    done = subprocess.run(
        ["bash", str(ENTRYPOINT), sys.executable, str(server), "0"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    return done, calls.read_text().splitlines()


@pytest.mark.parametrize(
    ("variables", "jitter", "bound", "flag"),
    [
        ({}, None, "340", "300"),
        ({"PKGCKPT_RESTORE_TIMEOUT": "120"}, None, "160", "120"),
        # The random wait before restore's own bound starts is inside the outer one,
        # wherever the jitter is set: the environment, the user's or an explicit file.
        ({"PKGCKPT_JITTER": "600"}, None, "940", "300"),
        ({"PKGCKPT_RESTORE_TIMEOUT": "5", "PKGCKPT_JITTER": "0.2"}, None, "46", "5"),
        ({}, "user", "940", "300"),
        ({"PKGCKPT_RESTORE_TIMEOUT": "5"}, "explicit", "645", "5"),
        ({"PKGCKPT_JITTER": "1"}, "user", "341", "300"),  # the variable wins, as in restore
        # Fractions are rounded up for timeout(1); pkgckpt gets them as they are.
        ({"PKGCKPT_RESTORE_TIMEOUT": "120.5"}, None, "161", "120.5"),
        ({"PKGCKPT_TIMEOUT": "2.25"}, None, "43", "2.25"),
        ({"PKGCKPT_RESTORE_TIMEOUT": "010"}, None, "50", "010"),
    ],
)
def test_restore_is_bounded_by_its_timeout_and_jitter(
    tmp_path: Path, variables: dict[str, str], jitter: str | None, bound: str, flag: str
) -> None:
    """timeout(1) allows the restore's own --timeout, the 10 s it has to report after it,
    its jitter and 30 s more, as the real `pkgckpt restore --print-bound` reads them. A
    `jitter` in a config file was left out: timeout(1) could kill a restore still in its
    random wait."""
    if jitter == "user":
        (tmp_path / "config" / "pkgckpt").mkdir(parents=True)
        (tmp_path / "config" / "pkgckpt" / "config.toml").write_text("jitter = 600\n")
    elif jitter == "explicit":
        (tmp_path / "c.toml").write_text("jitter = 600\n")
        variables = {**variables, "PKGCKPT_CONFIG": str(tmp_path / "c.toml")}
    done, calls = run_entrypoint(tmp_path, **variables)
    assert done.returncode == 0, done.stderr
    assert calls[:2] == [
        f"timeout --kill-after=10 30 pkgckpt restore --timeout {flag} --print-bound",
        f"timeout --kill-after=10 {bound} pkgckpt restore --timeout {flag}",
    ], calls
    assert calls[2:4] == [f"restore restore --timeout {flag}", "daemon"], calls
    assert "entrypoint:" not in done.stderr


@pytest.mark.parametrize("value", ["0", "0.0"])
def test_a_restore_timeout_of_0_is_no_bound(tmp_path: Path, value: str) -> None:
    """`--timeout 0` is no bound: no timeout(1) cuts it off either."""
    done, calls = run_entrypoint(tmp_path, PKGCKPT_RESTORE_TIMEOUT=value, PKGCKPT_JITTER="9")
    assert done.returncode == 0, done.stderr
    assert calls[1:3] == [f"restore restore --timeout {value}", "daemon"], calls


@pytest.mark.parametrize(
    ("variables", "said"),
    [
        (
            {"PKGCKPT_RESTORE_TIMEOUT": "5min"},
            "PKGCKPT_RESTORE_TIMEOUT (else PKGCKPT_TIMEOUT) is '5min'",
        ),
        ({"PKGCKPT_TIMEOUT": "1e3"}, "PKGCKPT_RESTORE_TIMEOUT (else PKGCKPT_TIMEOUT) is '1e3'"),
        (
            {"PKGCKPT_RESTORE_TIMEOUT": "-1"},
            "PKGCKPT_RESTORE_TIMEOUT (else PKGCKPT_TIMEOUT) is '-1'",
        ),
        ({"PKGCKPT_RESTORE_TIMEOUT": "1.2.3"}, "is '1.2.3', not a"),
        ({"PKGCKPT_RESTORE_TIMEOUT": "99999999999"}, "is '99999999999', not a"),
    ],
)
def test_a_bound_that_is_no_number_is_said_and_the_session_starts(
    tmp_path: Path, variables: dict[str, str], said: str
) -> None:
    """A restore timeout or jitter the script cannot read: no restore, one clear line, and
    the server and the daemon start all the same."""
    done, calls = run_entrypoint(tmp_path, **variables)
    assert done.returncode == 0, done.stderr
    assert calls[:1] == ["daemon"], calls
    (line,) = done.stderr.splitlines()
    assert line.startswith("entrypoint: ") and said in line, line
    assert line.endswith("nothing restored; starting anyway"), line
    assert (tmp_path / "shim" / "server-exited").exists()


@pytest.mark.parametrize(
    ("variables", "file", "said"),
    [
        ({"PKGCKPT_JITTER": "ten"}, None, "PKGCKPT_JITTER: invalid value 'ten' for jitter"),
        ({}, "jitter = 700\n", "jitter must be 0 to 600 seconds, not 700"),
    ],
)
def test_a_jitter_restore_refuses_is_said_and_the_session_starts(
    tmp_path: Path, variables: dict[str, str], file: str | None, said: str
) -> None:
    """A jitter pkgckpt refuses, from the environment or a config file: pkgckpt says why
    (exit 2), nothing is restored, and the server and the daemon start all the same."""
    if file is not None:
        (tmp_path / "c.toml").write_text(file)
        variables = {**variables, "PKGCKPT_CONFIG": str(tmp_path / "c.toml")}
    done, calls = run_entrypoint(tmp_path, **variables)
    assert done.returncode == 0, done.stderr
    assert calls[1:2] == ["daemon"], calls
    assert done.stderr.splitlines() == [
        f"pkgckpt: {said}",
        "entrypoint: pkgckpt restore failed (exit 2): nothing restored; starting anyway",
    ]
    assert (tmp_path / "shim" / "server-exited").exists()


# Answers of `--print-bound` that are no whole number of seconds, the last one a command
# the shell's arithmetic would run (`code` is a variable of the scripts).
NOT_A_BOUND = ["warning: something\n330", "", "010", "1" * 12, "code[$(touch {planted})0]"]


@pytest.mark.parametrize("answer", NOT_A_BOUND)
def test_a_bound_pkgckpt_prints_that_is_no_number_is_said_and_the_session_starts(
    tmp_path: Path, answer: str
) -> None:
    """`--print-bound` printing something else than whole seconds: said, nothing restored,
    nothing run from it, the server and the daemon start. The restore ran without
    timeout(1) (`[` failed on it), or the shell ran the command in it."""
    planted = tmp_path / "planted"
    done, calls = run_entrypoint(tmp_path, SHIM_BOUND=answer.format(planted=planted))
    assert done.returncode == 0, done.stderr
    assert calls[1:2] == ["daemon"], calls
    assert "print-bound said" in done.stderr and "nothing restored" in done.stderr, done.stderr
    assert not planted.exists()


@pytest.mark.parametrize("answer", NOT_A_BOUND)
def test_the_rstudio_script_runs_nothing_a_bound_that_is_no_number_says(
    tmp_path: Path, answer: str
) -> None:
    """The RStudio image's start-up script (root, pkgckpt run as the user) given a
    `--print-bound` answer that is no whole number: said, nothing restored, exit 0. It
    ran root's arithmetic on it: a command in it ran as root, a word ended the script
    (set -u) with exit 1."""
    planted = tmp_path / "planted"
    env, calls = shimmed(tmp_path, SHIM_BOUND=answer.format(planted=planted))
    # s6-setuidgid USER COMMAND...: here the user is this one.
    (tmp_path / "shim" / "s6-setuidgid").write_text('#!/bin/sh\nshift\nexec "$@"\n')
    (tmp_path / "shim" / "s6-setuidgid").chmod(0o755)
    env.update(USER=pwd.getpwuid(os.getuid()).pw_name, R_LIBS_USER=str(tmp_path / "lib"))
    done = subprocess.run(
        ["bash", str(RSTUDIO_RESTORE)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "print-bound said" in done.stderr and "nothing restored" in done.stderr, done.stderr
    assert len(calls.read_text().splitlines()) == 1, "restore ran"
    assert not planted.exists()


def test_a_failed_restore_is_said_once(tmp_path: Path) -> None:
    done, calls = run_entrypoint(tmp_path, SHIM_RESTORE_EXIT="2")
    assert done.returncode == 0 and "daemon" in calls, done.stderr
    assert done.stderr == "entrypoint: pkgckpt restore failed (exit 2); starting anyway\n"


def _serving(tmp_path: Path, code: str) -> tuple[subprocess.Popen[str], Path]:
    """The entrypoint running `code` as its server, in a session of its own, once the
    server and the daemon stand-in have started; and the stand-ins' log."""
    env, calls = shimmed(tmp_path)
    server = tmp_path / "server.py"
    server.write_text(code)
    proc = subprocess.Popen(
        ["bash", str(ENTRYPOINT), sys.executable, str(server)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=env, start_new_session=True, text=True,
    )  # fmt: skip
    try:
        eventually((tmp_path / "shim" / "server-started").exists, what="the server")
        eventually(lambda: calls.exists() and "daemon" in calls.read_text(), what="daemon")
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc, calls


@pytest.mark.parametrize("group", [False, True], ids=["entrypoint", "process-group"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_ends_the_server_then_the_daemon(
    tmp_path: Path, sig: signal.Signals, group: bool
) -> None:
    """SIGINT (tini passes on a Ctrl-C) stops the server as SIGTERM does, though bash starts
    background commands with SIGINT ignored; the daemon is told to flush once the server
    has exited, not before, and the entrypoint then exits. So too when the signal goes to
    the whole process group (`tini -g`, a Ctrl-C at a terminal): the daemon, in a session
    of its own, does not hear it, so what the server's shutdown installs is in its flush."""
    proc, calls = _serving(tmp_path, PLAIN_SERVER)
    try:
        time.sleep(0.2)  # the entrypoint is in its wait, its traps set
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = proc.stdout.read() if proc.stdout else ""
    assert (tmp_path / "shim" / "server-exited").exists(), output
    assert calls.read_text().splitlines()[-1] == "daemon: TERM after the server exited", output


# A server that exits 0 at once on SIGTERM, as a notebook server that has nothing to save.
QUICK_SERVER = """\
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
open(os.path.join(os.environ["SHIM_DIR"], "server-started"), "w").close()
time.sleep(600)
"""


def _tracer(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("TracerPid:", 1)[1].split()[0])


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_the_exit_status_is_the_servers_when_it_is_gone_before_the_shell_looks(
    tmp_path: Path,
) -> None:
    """A SIGTERM interrupts the shell's `wait`, which returns 143; a server that has exited
    (0) by the time the shell looks again must give its own status, not the wait's.

    Under load that is a race; strace makes it certain by holding each of the shell's
    kill(2) calls for 0.3 s on its way back, so that the server has exited, and been
    reaped, before the shell looks."""
    proc, _ = _serving(tmp_path, QUICK_SERVER)
    tracer = None
    try:
        tracer = subprocess.Popen(
            ["strace", "-qq", "-o", os.devnull, "-e", "trace=kill",
             "-e", "inject=kill:delay_exit=300000", "-p", str(proc.pid)],
        )  # fmt: skip
        eventually(lambda: _tracer(proc.pid) != 0, what="strace to attach")
        time.sleep(0.2)  # the entrypoint is in its wait, its traps set
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, proc.stdout.read() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if tracer is not None:
            tracer.wait(10)
