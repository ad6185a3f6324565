"""The RStudio image's start-up, run as s6-overlay runs it: root drops to the user.

`deploy/rstudio/Dockerfile` takes the baseline as the user with the user's HOME, and its
scripts (`pkgckpt-restore`, `pkgckpt-daemon`) run pkgckpt through s6-setuidgid, which
changes the ids and not HOME. The baseline's kept answers are keyed on both, so unless
the scripts set HOME as the image build had it, every container start asks R again
(Rscript, ~0.8 s) before the first session opens. alice plays the image's user; the
commands are the real ones (s6-setuidgid from Debian's s6, Rscript, strace)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.conftest import User

pytestmark = pytest.mark.slow

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "rstudio"

for _tool in ("s6-setuidgid", "Rscript", "strace"):
    if shutil.which(_tool) is None:
        pytest.skip(f"{_tool} is not installed (scripts/test installs it)", allow_module_level=True)


@pytest.fixture
def image(alice: User) -> Iterator[Path]:
    """A root-owned tree alice can enter: /etc/pkgckpt hers (the Dockerfile's
    `install -d -o rstudio`), a store of hers for /mnt/pkgckpt."""
    root = Path(tempfile.mkdtemp(prefix="pkgckpt-rstudio-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        for name in ("etc", "mnt"):
            (root / name).mkdir(mode=0o755)
            os.chown(root / name, alice.uid, alice.gid)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def container_env(alice: User, tool: Path, image: Path, run: str) -> dict[str, str]:
    """What with-contenv gives the scripts: the image's ENV and root's HOME."""
    return {
        "PATH": f"{tool / 'bin'}:/usr/bin:/bin",
        "HOME": "/root",
        "USER": alice.name,
        "LANG": "C.UTF-8",
        "R_LIBS_USER": str(alice.home / "R" / "library"),
        "PKGCKPT_STORE": str(image / "mnt" / "store"),
        "PKGCKPT_BASELINE": str(image / "etc" / "baseline.json"),
        "XDG_RUNTIME_DIR": run,
    }


def programs(trace: Path) -> list[str]:
    """The programs a traced run started (`strace -e execve`), successful calls only."""
    started = re.compile(r'execve\("([^"]+)".*= 0$')
    return [m[1] for line in trace.read_text().splitlines() if (m := started.search(line))]


def runtime_dir(alice: User, path: Path) -> str:
    path.mkdir(mode=0o700)
    os.chown(path, alice.uid, alice.gid)
    return str(path)


def test_the_scripts_use_the_answers_the_image_build_kept(
    alice: User, tool: Path, image: Path, tmp_path: Path
) -> None:
    """Restore through the image's script starts no Rscript; without HOME set it would."""
    built = container_env(alice, tool, image, runtime_dir(alice, image / "build"))
    alice.run(["mkdir", "-p", built["R_LIBS_USER"]], check=True)
    alice.run([str(tool / "bin" / "pkgckpt"), "store", "init", built["PKGCKPT_STORE"]], check=True)
    # The Dockerfile's step: `USER rstudio` and `RUN HOME=/home/rstudio pkgckpt baseline`.
    baseline = [str(tool / "bin" / "pkgckpt"), "baseline", "--output", built["PKGCKPT_BASELINE"]]
    done = alice.run(baseline, env={**built, "HOME": str(alice.home)})
    assert done.returncode == 0, done.stderr
    assert (image / "etc" / "baseline.probes.json").is_file()

    # A new container: s6's cont-init runs the script as root, with root's HOME.
    env = container_env(alice, tool, image, runtime_dir(alice, image / "start"))
    trace = tmp_path / "start.trace"
    script = str(DEPLOY / "pkgckpt-restore")
    argv = ["strace", "-f", "-qq", "-e", "trace=execve", "-o", str(trace), "bash", script]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "restore failed" not in done.stderr and "pkgckpt: error" not in done.stderr
    started = programs(trace)
    assert any(p.endswith("/pkgckpt") for p in started), started
    assert not [p for p in started if p.endswith(("/Rscript", "/exec/R"))], started

    # The same restore the way the script ran it before HOME was set: R is asked again.
    env = container_env(alice, tool, image, runtime_dir(alice, image / "before"))
    trace = tmp_path / "before.trace"
    restore = ["s6-setuidgid", alice.name, "pkgckpt", "restore", "--timeout", "300"]
    argv = ["strace", "-f", "-qq", "-e", "trace=execve", "-o", str(trace), *restore]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [p for p in programs(trace) if p.endswith("/Rscript")], programs(trace)


def test_the_daemon_script_runs_as_the_user_with_the_users_home(
    alice: User, tool: Path, image: Path, tmp_path: Path
) -> None:
    """The s6 service runs `pkgckpt daemon` as the user, with the HOME restore had."""
    env = container_env(alice, tool, image, runtime_dir(alice, image / "run"))
    alice.run([str(tool / "bin" / "pkgckpt"), "store", "init", env["PKGCKPT_STORE"]], check=True)
    service = subprocess.Popen(
        ["bash", str(DEPLOY / "pkgckpt-daemon")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # exec all the way down: the service's pid becomes the daemon's.
        status = Path(f"/proc/{service.pid}/status")
        environ = Path(f"/proc/{service.pid}/environ")
        cmdline = Path(f"/proc/{service.pid}/cmdline")
        for _ in range(200):
            argv = cmdline.read_bytes().split(b"\0")
            if service.poll() is not None or (b"daemon" in argv and b"bash" not in argv[0]):
                break
            time.sleep(0.05)
        assert service.poll() is None, service.stderr.read() if service.stderr else ""
        uids = next(line for line in status.read_text().splitlines() if line.startswith("Uid:"))
        assert uids.split()[1:] == [str(alice.uid)] * 4
        assert f"HOME={alice.home}".encode() in environ.read_bytes().split(b"\0")
    finally:
        service.terminate()
        service.wait(timeout=30)


# The service directory's `run`: counts its starts, then execs the image's script.
SERVICE_RUN = """\
#!/bin/sh
echo started >>"{starts}"
exec bash "{script}"
"""


def down_for_good(service: Path, env: dict[str, str]) -> list[str] | None:
    """`s6-svstat`'s up, wanted up and exit code once the daemon is down, else None."""
    argv = ["s6-svstat", "-o", "up,wantedup,exitcode", str(service)]
    said = subprocess.run(argv, env=env, capture_output=True, text=True).stdout.split()
    return said if said[:1] == ["false"] else None


@pytest.mark.parametrize("code", [2, 4])
def test_s6_leaves_the_daemon_down_after_an_exit_that_would_come_back(
    alice: User, tool: Path, image: Path, code: int
) -> None:
    """Under s6-supervise, a daemon that exits 2 (a wrong setting) or 4 (another daemon
    holds the store and key) is not started again every second: the service's `finish`
    exits 125 and says why. Without it s6 restarted it, indefinitely."""
    if shutil.which("s6-supervise") is None or shutil.which("flock") is None:
        pytest.skip("s6-supervise or flock(1) is not installed (scripts/test installs them)")
    run = runtime_dir(alice, image / "run")
    env = container_env(alice, tool, image, run)
    alice.run([str(tool / "bin" / "pkgckpt"), "store", "init", env["PKGCKPT_STORE"]], check=True)
    holder = None
    if code == 2:
        (image / "etc" / "config.toml").write_text('debounce = "soon"\n')
        env["PKGCKPT_CONFIG"] = str(image / "etc" / "config.toml")
    else:
        holder = subprocess.Popen(
            ["bash", str(DEPLOY / "pkgckpt-daemon")], env=env, stderr=subprocess.DEVNULL
        )
        for _ in range(300):
            locks = list(Path(run, "pkgckpt").glob("daemon-*.lock"))
            held = ["flock", "-n", str(locks[0]), "true"] if locks else None
            if held and subprocess.run(held).returncode == 1:
                break
            assert holder.poll() is None, "the first daemon exited"
            time.sleep(0.05)
        else:
            pytest.fail("the first daemon never took its lock")
    service = image / "service"
    service.mkdir(mode=0o755)
    starts = image / "starts"
    (service / "run").write_text(
        SERVICE_RUN.format(starts=starts, script=DEPLOY / "pkgckpt-daemon")
    )
    (service / "run").chmod(0o755)
    shutil.copy(DEPLOY / "pkgckpt-daemon-finish", service / "finish")
    supervise = subprocess.Popen(
        ["s6-supervise", str(service)], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for _ in range(600):
            if (said := down_for_good(service, env)) is not None and starts.exists():
                break
            time.sleep(0.05)
        # s6 would have started it again a second after `finish`: give it three.
        time.sleep(3)
        said = down_for_good(service, env)
        assert said == ["false", "false", str(code)], said
        assert starts.read_text().splitlines() == ["started"]
    finally:
        supervise.terminate()
        _, err = supervise.communicate(timeout=30)
        if holder is not None:
            holder.terminate()
            holder.wait(timeout=30)
    assert f"pkgckpt: the daemon exited {code}; not starting it again" in err, err


@pytest.mark.parametrize("code", ["0", "1", "3", "256"])
def test_s6_starts_the_daemon_again_after_other_exits(code: str) -> None:
    """Any other end (a crash, a signal: 256) leaves s6's restart as it was."""
    finish = ["sh", str(DEPLOY / "pkgckpt-daemon-finish"), code, "9" if code == "256" else "0"]
    done = subprocess.run(finish, capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (0, "")


# timeout(1), logging its arguments before it runs the command (it runs as root, before
# s6-setuidgid drops to the user).
SHIM_TIMEOUT = """\
#!/bin/sh
echo "timeout $*" >>"{calls}"
exec {timeout} "$@"
"""


@pytest.mark.parametrize("where", ["the user's config file", "PKGCKPT_CONFIG", "PKGCKPT_JITTER"])
def test_the_restore_is_bounded_by_its_timeout_and_a_jitter_set_anywhere(
    alice: User, tool: Path, image: Path, where: str
) -> None:
    """timeout(1) allows the restore's 300 s, the 10 s it has to report after them, its
    jitter's 600 s and 30 s more, as the real `pkgckpt restore --print-bound` reads them as
    the user with the user's HOME; it allowed 330 s, and cut off a restore that drew a
    wait over 30 s. The container
    restored once already, so this restore does not wait."""
    pkgckpt = str(tool / "bin" / "pkgckpt")
    env = container_env(alice, tool, image, runtime_dir(alice, image / "run"))
    users = {**env, "HOME": str(alice.home)}
    alice.run(["mkdir", "-p", env["R_LIBS_USER"]], check=True)
    alice.run([pkgckpt, "store", "init", env["PKGCKPT_STORE"]], check=True)
    alice.run([pkgckpt, "baseline", "--output", env["PKGCKPT_BASELINE"]], env=users, check=True)
    alice.run([pkgckpt, "restore"], env=users, check=True)

    shim = image / "shim"
    shim.mkdir(mode=0o755)
    timeout = shutil.which("timeout")
    assert timeout is not None, "timeout(1) (coreutils) is not installed"
    calls = shim / "calls"
    (shim / "timeout").write_text(SHIM_TIMEOUT.format(calls=calls, timeout=timeout))
    (shim / "timeout").chmod(0o755)
    env["PATH"] = f"{shim}:{env['PATH']}"
    user_config = alice.home / ".config" / "pkgckpt"
    if where == "the user's config file":
        write = f"mkdir -p {user_config} && echo 'jitter = 600' > {user_config}/config.toml"
        alice.run(["sh", "-c", write], check=True)
    elif where == "PKGCKPT_CONFIG":
        (image / "etc" / "config.toml").write_text("jitter = 600\n")
        env["PKGCKPT_CONFIG"] = str(image / "etc" / "config.toml")
    else:
        env["PKGCKPT_JITTER"] = "600"
    try:
        script = ["bash", str(DEPLOY / "pkgckpt-restore")]
        done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=300)
    finally:
        alice.run(["rm", "-rf", str(user_config)], check=True)
    assert done.returncode == 0, done.stderr
    assert "pkgckpt: " not in done.stderr, done.stderr
    assert "nothing to restore" in done.stdout, done.stdout
    as_user = f"s6-setuidgid {alice.name} env HOME={alice.home} pkgckpt restore --timeout 300"
    assert calls.read_text().splitlines() == [
        f"timeout --kill-after=10 30 {as_user} --print-bound",
        f"timeout --kill-after=10 940 {as_user}",
    ]


def test_a_jitter_restore_refuses_is_said_and_rstudio_starts(
    alice: User, tool: Path, image: Path
) -> None:
    """A jitter pkgckpt refuses in a config file: pkgckpt says why, nothing is restored,
    and the script still lets RStudio start (exit 0)."""
    env = container_env(alice, tool, image, runtime_dir(alice, image / "run"))
    (image / "etc" / "config.toml").write_text("jitter = 700\n")
    env["PKGCKPT_CONFIG"] = str(image / "etc" / "config.toml")
    script = ["bash", str(DEPLOY / "pkgckpt-restore")]
    done = subprocess.run(script, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "pkgckpt: jitter must be 0 to 600 seconds, not 700",
        "pkgckpt: restore failed (exit 2): nothing restored; starting anyway",
    ]
