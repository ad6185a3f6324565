"""The interpreters' and R's answers kept beside the image's baseline: a new container of
the image (an empty runtime directory) restores without starting a probe, and probes
again as soon as any input of the answer differs from the image build's."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from restore_kit import (
    hermetic,
    isolated,  # noqa: F401 (an autouse fixture)
    put_manifest,
)
from wheelhouse import Dist, build_wheel, make_venv

from pkgckpt.config import Config
from pkgckpt.inventory import targets
from pkgckpt.manifest import Body, Delta, Package
from pkgckpt.scan.kept import holds, stable

pytestmark = pytest.mark.slow

UV = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
EXECVE = re.compile(r'^\d+\s+execve\("([^"]+)", \[(.*?)\]')
# The first bytes of env.py's probe as strace shows them (-I -c CODE).
PYTHON_PROBE = '"-I", "-c", "import os, site, sys, sysconfig'


@dataclass
class Image:
    """A venv, a store holding its manifest, and the baseline `pkgckpt baseline` wrote."""

    root: Path
    venv: Path
    store: Path
    wheels: Path
    baseline: Path
    env: dict[str, str]

    def build(self) -> None:
        """The image build step: `pkgckpt baseline --output FILE`."""
        done = run(self.env, "baseline", "--output", str(self.baseline), "--env", str(self.venv))
        assert done.returncode == 0, done.stderr

    def new_container(self) -> None:
        """What a new container of the image starts with: no runtime directory."""
        shutil.rmtree(self.env["XDG_RUNTIME_DIR"], ignore_errors=True)

    def restore(
        self, *, configured: bool = True, fresh: bool = True, **extra: str
    ) -> list[tuple[str, str]]:
        """`pkgckpt restore` as the image's entry point runs it (PKGCKPT_BASELINE set unless
        not `configured`), in a new container unless not `fresh`, traced: the (program,
        argv) of every process it started."""
        if fresh:
            self.new_container()
        argv = ["restore", *self.flags(), "--no-index", "--find-links", str(self.wheels)]
        return traced(self.environ(configured, **extra), self.root, *argv)

    def status(self, *, configured: bool = True, **extra: str) -> list[tuple[str, str]]:
        """`pkgckpt status` in this container (no new one), traced as `restore`."""
        return traced(self.environ(configured, **extra), self.root, "status", *self.flags())

    def environ(self, configured: bool, **extra: str) -> dict[str, str]:
        env = {**self.env, **extra}
        if configured:
            env["PKGCKPT_BASELINE"] = str(self.baseline)
        return env

    def flags(self) -> list[str]:
        return ["--store", str(self.store), "--key", "k", "--env", str(self.venv)]

    @property
    def runtime(self) -> Path:
        """The runtime directory (`config.runtime_dir` under XDG_RUNTIME_DIR)."""
        return Path(self.env["XDG_RUNTIME_DIR"]) / "pkgckpt"


def run(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pkgckpt", *args],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def traced(env: Mapping[str, str], root: Path, *args: str) -> list[tuple[str, str]]:
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed: started processes cannot be seen")
    trace = root / "trace.txt"
    done = subprocess.run(
        ["strace", "-f", "-s", "64", "-e", "trace=execve", "-o", str(trace),
         sys.executable, "-m", "pkgckpt", *args],
        capture_output=True, text=True, env=dict(env), timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if done.returncode != 0 and "ptrace" in done.stderr.lower():
        pytest.skip(f"strace cannot trace here (seccomp or ptrace_scope): {done.stderr.strip()}")
    assert done.returncode == 0, done.stdout + done.stderr
    return execs(trace)


def execs(trace: Path) -> list[tuple[str, str]]:
    """(program, argv) of every successful execve in an `strace -f -e execve` log."""
    started = []
    for line in trace.read_text(errors="replace").splitlines():
        m = EXECVE.match(line)
        if m is not None and line.rstrip().endswith("= 0"):
            started.append((m.group(1), m.group(2)))
    return started


def python_probes(started: list[tuple[str, str]], venv: Path) -> list[str]:
    return [p for p, argv in started if p.startswith(str(venv)) and PYTHON_PROBE in argv]


def r_started(started: list[tuple[str, str]]) -> list[str]:
    # Rscript execs R's shell script, which execs bin/exec/R.
    return [p for p, _ in started if Path(p).name in ("Rscript", "R")]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    build_wheel(Dist("alpha", "1.0"), out)
    return out


def make_image(
    root: Path, wheels: Path, *, r: bool = False, r_lib: Path | None = None, path: str = ""
) -> Image:
    """The image built: R's libraries discovered when `r`, else `r_lib` named when given;
    `path` goes first on PATH."""
    env = hermetic(root)
    env["PATH"] = f"{path}{Path(UV).parent}:{env.get('PATH', '')}"
    home = root / "home"
    home.mkdir()
    env["HOME"] = str(home)
    if r:
        env.pop("PKGCKPT_DISCOVER")  # the default: R's libraries discovered
    if r_lib is not None:
        r_lib.mkdir(exist_ok=True)
        env["PKGCKPT_R_LIB"] = str(r_lib)
    venv = make_venv(root / "venv", with_pip=False).prefix
    store = root / "store"
    target = targets(Config(env=(venv,)))[0].env
    added = (Package(name="alpha", version="1.0"),)
    put_manifest(store, "k", Body(environments=(Delta(env=target, added=added),)))
    image = Image(root, venv, store, wheels, root / "etc" / "baseline.json", env)
    image.baseline.parent.mkdir()
    image.build()
    return image


@pytest.fixture
def image(tmp_path: Path, wheels: Path) -> Image:
    return make_image(tmp_path, wheels)


def _answers(image: Image) -> Path:
    return image.baseline.with_name("baseline.probes.json")


def test_new_container_restore_starts_no_interpreter_probe(image: Image) -> None:
    """With the image's answers, a restore in a new container never starts the probe;
    without them (no baseline configured) the same restore does: the check can fail."""
    assert _answers(image).is_file()
    started = image.restore()
    assert python_probes(started, image.venv) == []
    assert any(Path(p).name == "uv" for p, _ in started)  # it did install
    started = image.restore(configured=False)
    assert python_probes(started, image.venv) != []


def test_new_container_status_starts_no_interpreter_probe(image: Image) -> None:
    """`pkgckpt status` in a new container uses the image's answers too."""
    image.new_container()
    env = {**image.env, "PKGCKPT_BASELINE": str(image.baseline)}
    argv = ("status", "--store", str(image.store), "--key", "k", "--env", str(image.venv))
    assert python_probes(traced(env, image.root, *argv), image.venv) == []
    env.pop("PKGCKPT_BASELINE")
    image.new_container()
    assert python_probes(traced(env, image.root, *argv), image.venv) != []


@pytest.mark.parametrize("configured", [True, False])
def test_new_container_daemon_starts_no_interpreter_probe(image: Image, configured: bool) -> None:
    """`pkgckpt daemon` in a new container uses the image's answers too: ready (its
    first scan done) without having started the probe; without the baseline it probes."""
    image.new_container()
    started = traced_daemon(image, image.environ(configured))
    assert (python_probes(started, image.venv) == []) == configured


def traced_daemon(image: Image, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """`pkgckpt daemon` started traced in this container, stopped once ready (its first
    scan done): what it started."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed: started processes cannot be seen")
    trace = image.root / "daemon-trace.txt"
    address = f"pkgckpt-test-{os.getpid()}-{time.monotonic_ns()}"
    env = {**environ, "NOTIFY_SOCKET": "@" + address}
    argv = ["daemon", *image.flags()]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as notify:
        notify.bind("\0" + address)
        notify.settimeout(120)
        with (image.root / "daemon.log").open("wb") as log:
            proc = subprocess.Popen(
                ["strace", "-f", "-s", "64", "-e", "trace=execve", "-o", str(trace),
                 sys.executable, "-m", "pkgckpt", *argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            )  # fmt: skip
        daemon = None
        try:
            while b"READY=1" not in notify.recv(4096):
                pass
            # strace's first line is the daemon's own execve, with its pid.
            daemon = int(trace.read_text().split()[0])
            os.kill(daemon, signal.SIGTERM)
            proc.wait(60)
        finally:
            if proc.poll() is None:
                if daemon is not None:
                    os.kill(daemon, signal.SIGKILL)
                proc.kill()
                proc.wait()
    return execs(trace)


def test_answers_hold_across_new_inodes_and_whole_second_mtimes(image: Image) -> None:
    """A copy of the venv with new inodes and ctimes, mtimes cut to whole seconds (a new
    container of a pulled image) still uses the answers."""
    copy = image.root / "copy"
    subprocess.run(["cp", "-a", str(image.venv), str(copy)], check=True)
    shutil.rmtree(image.venv)
    copy.rename(image.venv)
    for top, dirs, files in os.walk(image.venv, topdown=False):
        for name in [*files, *dirs, None]:
            path = Path(top, name) if name else Path(top)
            st = path.lstat()
            ns = st.st_mtime_ns - st.st_mtime_ns % 1_000_000_000
            os.utime(path, ns=(ns, ns), follow_symlinks=False)
    assert python_probes(image.restore(), image.venv) == []


def _overlay(lower: Path, upper: Path, at: Path) -> None:
    work = upper.with_name(upper.name + "-work")
    for d in (lower, upper, work, at):
        d.mkdir(exist_ok=True)
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    done = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(at)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount overlayfs here: {done.stderr.strip()}")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount overlayfs")
def test_a_new_overlay_of_the_built_layer_uses_the_answers(tmp_path: Path, wheels: Path) -> None:
    """The image built in one overlayfs mount, its layer the lower of a new mount at the
    same path (another st_dev, as a new container sees it): no probe starts."""
    layer, merged = tmp_path / "layer", tmp_path / "merged"
    _overlay(tmp_path / "empty", layer, merged)
    try:
        image = make_image(merged, wheels)
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    _overlay(layer, tmp_path / "container", merged)
    try:
        assert merged.stat().st_dev != layer.stat().st_dev
        started = image.restore()
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    assert python_probes(started, image.venv) == []
    assert any(Path(p).name == "uv" for p, _ in started)


def test_changed_pyvenv_cfg_content_probes_again(image: Image) -> None:
    """pyvenv.cfg rewritten with the same size and mtime but other content: asked again."""
    cfg = image.venv / "pyvenv.cfg"
    st = cfg.stat()
    text = cfg.read_text()
    changed = text.replace(
        "include-system-site-packages = false", "include-system-site-packages = true "
    )
    assert changed != text and len(changed) == len(text)
    cfg.write_text(changed)
    os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert python_probes(image.restore(), image.venv) != []


def test_replaced_venv_probes_again(image: Image) -> None:
    """The venv built again at the same path (a user's rebuild): asked again."""
    shutil.rmtree(image.venv)
    make_venv(image.venv, with_pip=False)
    assert python_probes(image.restore(), image.venv) != []


def test_other_steering_variable_probes_again(image: Image) -> None:
    """A PYTHONUSERBASE the build did not have changes the key: asked again."""
    started = image.restore(PYTHONUSERBASE=str(image.root / "userbase"))
    assert python_probes(started, image.venv) != []


@pytest.mark.parametrize("loose", ["answers", "baseline"])
def test_answers_beside_a_loose_file_are_ignored(image: Image, loose: str) -> None:
    """Answers in, or beside, a file others can write are not trusted: asked again."""
    (_answers(image) if loose == "answers" else image.baseline).chmod(0o666)
    assert python_probes(image.restore(), image.venv) != []


# -- the runtime directory's copies -----------------------------------------------------


def _kept_in(runtime: Path, what: str) -> list[Path]:
    return sorted(runtime.glob(f"{what}-*.json")) if runtime.is_dir() else []


@pytest.mark.parametrize("configured", [True, False])
def test_first_restore_keeps_the_answers_for_the_next_command(
    image: Image, configured: bool
) -> None:
    """A new container's first restore, whether it probed or used the image's answers,
    keeps them in the runtime directory: a status after it without the image's baseline
    (so without its answers) starts no probe."""
    started = image.restore(configured=configured)
    assert (python_probes(started, image.venv) == []) == configured
    assert _kept_in(image.runtime, "python-env") != []
    assert python_probes(image.status(configured=False), image.venv) == []


def test_daemon_after_the_first_restore_starts_no_probe(image: Image) -> None:
    """The daemon started after a new container's first restore, with no image answers
    to use, finds the restore's answers: ready without starting the probe."""
    assert python_probes(image.restore(configured=False), image.venv) != []
    started = traced_daemon(image, image.environ(configured=False))
    assert python_probes(started, image.venv) == []


def test_read_only_commands_keep_nothing_and_create_no_runtime_directory(image: Image) -> None:
    """status and restore --dry-run in a new container probe, and hold the answers
    without creating the runtime directory; the next status probes again."""
    image.new_container()
    assert python_probes(image.status(configured=False), image.venv) != []
    env = image.environ(configured=False)
    done = run(env, "restore", "--dry-run", *image.flags())
    assert done.returncode == 0, done.stderr
    assert not image.runtime.exists()
    assert python_probes(image.status(configured=False), image.venv) != []


def test_answers_are_never_kept_in_a_planted_runtime_directory(image: Image) -> None:
    """A runtime directory others may write (planted in a shared /tmp) gets no answer:
    they go to the private fallback, where the next command finds them."""
    image.new_container()
    image.runtime.mkdir(parents=True)
    image.runtime.chmod(0o777)
    assert python_probes(image.restore(configured=False, fresh=False), image.venv) != []
    assert list(image.runtime.iterdir()) == []
    fallback = Path(image.env["HOME"], ".cache", "pkgckpt")
    assert [p for p in fallback.glob("run-*/python-env-*.json")] != []
    assert python_probes(image.status(configured=False), image.venv) == []


# -- R ----------------------------------------------------------------------------------


@pytest.fixture
def r_image(tmp_path: Path, wheels: Path) -> Image:
    if shutil.which("Rscript") is None or shutil.which("R") is None:
        print("Rscript or R is not on PATH: the R answers cannot be tested")
        pytest.skip("Rscript or R is not on PATH")
    return make_image(tmp_path, wheels, r=True)


def test_new_container_restore_starts_no_r(r_image: Image) -> None:
    """With R discovery on, a restore in a new container of the image starts no R (nor
    the interpreter probe); without the image's answers it starts Rscript."""
    started = r_image.restore()
    assert r_started(started) == []
    assert python_probes(started, r_image.venv) == []
    assert r_started(r_image.restore(configured=False)) != []


def test_r_libs_user_set_probes_r_again(r_image: Image) -> None:
    """An R_LIBS_USER the build did not have: R is asked again."""
    started = r_image.restore(R_LIBS_USER=str(r_image.root / "rlib"))
    assert r_started(started) != []


def test_user_renviron_created_probes_r_again(r_image: Image) -> None:
    """A ~/.Renviron created since the build (a persistent home): R is asked again."""
    (Path(r_image.env["HOME"]) / ".Renviron").write_text("R_LIBS_SITE=/nonexistent\n")
    assert r_started(r_image.restore()) != []


def test_user_library_created_probes_r_again(r_image: Image) -> None:
    """The user library R_LIBS_USER names by default created since the build: R would
    now list it, so it is asked again."""
    home = Path(r_image.env["HOME"])
    done = subprocess.run(
        ["Rscript", "--no-init-file", "-e", "cat(Sys.getenv('R_LIBS_USER'))"],
        capture_output=True, text=True, env=r_image.env, check=True,
    )  # fmt: skip
    lib = Path(done.stdout.strip().replace("~", str(home), 1))
    assert lib.is_relative_to(home)
    lib.mkdir(parents=True)
    assert r_started(r_image.restore()) != []


def test_first_restore_keeps_r_answer_for_the_next_command(r_image: Image) -> None:
    """R discovered: a new container's first restore without the image's answers asks
    R once and keeps its answer; the status after it starts no R."""
    assert r_started(r_image.restore(configured=False)) != []
    assert _kept_in(r_image.runtime, "r-libs") != []
    assert r_started(r_image.status(configured=False)) == []


def test_stable_identity_allows_a_pulled_layers_whole_seconds_and_nothing_else(
    tmp_path: Path,
) -> None:
    """An identity holds for the build's mtime or that mtime cut to whole seconds (a
    layer tar), never for another mtime, size or content, nor for a file since created."""
    path = tmp_path / "f"
    path.write_text("abc")
    ns = 1_700_000_000_123_456_789

    def stamped_at(mtime: int) -> bool:
        os.utime(path, ns=(mtime, mtime))
        return holds(kept)

    os.utime(path, ns=(ns, ns))
    kept = stable(str(path))
    assert stamped_at(ns)
    assert stamped_at(1_700_000_000_000_000_000)
    assert not stamped_at(1_700_000_001_000_000_000)
    assert not stamped_at(ns - 1)
    path.write_text("abcd")
    assert not stamped_at(ns)
    by_content = stable(str(path), content=True)
    path.write_text("abce")
    assert not holds(by_content)
    missing = stable(str(tmp_path / "later"), content=True)
    assert holds(missing)
    (tmp_path / "later").write_text("")
    assert not holds(missing)


# -- R libraries named (no R discovery): the R on PATH's version and platform ------------


def _skip_without_r() -> None:
    if shutil.which("Rscript") is None or shutil.which("R") is None:
        print("Rscript or R is not on PATH: the R answers cannot be tested")
        pytest.skip("Rscript or R is not on PATH")


@pytest.fixture
def r_named(tmp_path: Path, wheels: Path) -> Image:
    _skip_without_r()
    return make_image(tmp_path, wheels, r_lib=tmp_path / "rlib")


def rhome_started(started: list[tuple[str, str]]) -> list[str]:
    return [p for p, argv in started if Path(p).name == "R" and '"RHOME"' in argv]


def test_named_r_libraries_new_container_restore_starts_no_r(r_named: Image) -> None:
    """With R libraries named, a restore in a new container starts no R (not even
    `R RHOME`); without the image's answers it runs `R RHOME`, and keeps the answer: the
    status after it starts no R."""
    assert r_started(r_named.restore()) == []
    assert rhome_started(r_named.restore(configured=False)) != []
    assert _kept_in(r_named.runtime, "r-home") != []
    assert r_started(r_named.status(configured=False)) == []


def test_named_r_libraries_other_r_variable_asks_again(r_named: Image) -> None:
    """An R_* variable the build did not have (R_LIBS_USER) changes the key: asked again."""
    started = r_named.restore(R_LIBS_USER=str(r_named.root / "elsewhere"))
    assert rhome_started(started) != []


def _relocated_r(root: Path) -> Path:
    """R's own front-end script, moved as R's installation guide says (its R_HOME_DIR
    edited), over a home holding `tools`' DESCRIPTION: what `R RHOME` and the version
    lookup read. Returns its bin directory."""
    front = Path(shutil.which("R") or "").resolve()
    home = subprocess.run([str(front), "RHOME"], capture_output=True, text=True, check=True)
    script = front.read_text()
    moved = root / "R"
    if not re.search(r"^R_HOME_DIR=", script, re.M):
        pytest.skip(f"{front} does not set R_HOME_DIR: it cannot be relocated")
    (moved / "bin").mkdir(parents=True)
    (moved / "library" / "tools").mkdir(parents=True)
    edited = re.sub(r"^R_HOME_DIR=.*$", f"R_HOME_DIR={moved}", script, count=1, flags=re.M)
    (moved / "bin" / "R").write_text(edited)
    (moved / "bin" / "R").chmod(0o755)
    tools = Path(home.stdout.strip(), "library", "tools", "DESCRIPTION")
    shutil.copy2(tools, moved / "library" / "tools" / "DESCRIPTION")
    return moved / "bin"


def test_named_r_libraries_r_upgraded_in_place_asks_again(tmp_path: Path, wheels: Path) -> None:
    """`tools`' DESCRIPTION rewritten with the same size and mtime (an R upgraded in
    place): `R RHOME` runs again in a new container; untouched, it does not."""
    _skip_without_r()
    bin_dir = _relocated_r(tmp_path)
    image = make_image(tmp_path, wheels, r_lib=tmp_path / "rlib", path=f"{bin_dir}:")
    assert r_started(image.restore()) == []
    tools = bin_dir.parent / "library" / "tools" / "DESCRIPTION"
    st = tools.stat()
    text = tools.read_text()
    changed = re.sub(r"(Built: R )(\d)", lambda m: m.group(1) + str(9 - int(m.group(2))), text)
    assert changed != text and len(changed) == len(text)
    tools.write_text(changed)
    os.utime(tools, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert rhome_started(image.restore()) == [str(bin_dir / "R")]


def test_daemon_first_in_a_new_container_keeps_its_answers(image: Image) -> None:
    """The daemon started before any restore, with no image answers to use, probes once
    and keeps the answer: a status after it starts no probe."""
    image.new_container()
    assert python_probes(traced_daemon(image, image.environ(configured=False)), image.venv) != []
    assert _kept_in(image.runtime, "python-env") != []
    assert python_probes(image.status(configured=False), image.venv) == []
