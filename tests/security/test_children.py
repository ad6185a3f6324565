"""Children start clean, and local sources are verified: real attacks by bob on alice.

bob plants files where alice happens to stand (a shared /tmp) or replaces the wheel her
manifest records; alice runs the real `pkgckpt status` and `pkgckpt restore` as herself.
Every plant writes a marker file when it runs; the tests assert that none exists and that
alice's command still did its work (or refused with the documented message)."""

from __future__ import annotations

import base64
import grp
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pkgckpt import manifest
from pkgckpt.manifest import (
    Body,
    Delta,
    DirectorySource,
    Environment,
    Manifest,
    Package,
    UrlSource,
)
from pkgckpt.store import init_store
from tests import rpkgs
from tests.restore_kit import project
from tests.security.conftest import User
from tests.wheelhouse import Dist, build_wheel

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def evil_wheel(name: str, version: str, outdir: Path, marker: Path) -> Path:
    """A wheel whose `.pth` file writes `marker` whenever an interpreter of its venv starts."""
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": b"EVIL = True\n",
        f"{module}_evil.pth": f"import os; open({str(marker)!r}, 'w').close()\n".encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: bob\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name_, data in files.items():
            zf.writestr(name_, data)
    return path


def chown_tree(path: Path, user: User) -> Path:
    for p in [path, *path.rglob("*")]:
        os.lchown(p, user.uid, user.gid)
    return path


class Alice:
    """alice's own venv, wheels, store and runtime directory, all in her home."""

    def __init__(self, user: User, tool: Path) -> None:
        self.user = user
        self.tool = tool
        self.home = user.home / f"case-{secrets.token_hex(3)}"
        self.home.mkdir(mode=0o700)
        self.wheels = self.home / "wheels"
        for dist in (Dist("alpha", "1.0"), Dist("gamma", "1.0")):
            build_wheel(dist, self.wheels)
        self.store = self.home / "store"
        self.env_prefix = self.home / "env"
        (self.home / "tmp").mkdir()
        chown_tree(self.home, user)
        python = str(tool / "bin" / "python")
        self.run_as([python, "-m", "venv", "--without-pip", str(self.env_prefix)])
        self.site = next(self.env_prefix.glob("lib/python3*/site-packages"))

    def run_as(self, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        out = self.user.run(argv, **kw)  # type: ignore[arg-type]
        assert out.returncode == 0, (argv, out.stdout, out.stderr)
        return out

    def env(self) -> Environment:
        # The environment as alice's own scan names it: her venv's prefix.
        return Environment(kind="python", path=str(self.env_prefix))

    def put(self, generation: int, *packages: Package, env: Environment | None = None) -> None:
        """The manifest of her venv (or of `env`) with `packages` added."""
        directory = self.store / self.user.name
        init_store(self.store)
        directory.mkdir(parents=True, exist_ok=True)
        body = Body(environments=(Delta(env=env or self.env(), added=packages),))
        data = manifest.encode(
            Manifest(generation=generation, time="2024-01-01T00:00:00+00:00", body=body)
        )
        (directory / "manifest.json").write_bytes(data)
        for p in (self.store, directory):
            p.chmod(0o700)
        (directory / "manifest.json").chmod(0o600)
        chown_tree(self.store, self.user)

    def pkgckpt(
        self, *args: str, cwd: Path | str = "/", installer: str = "uv", path: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """The real command as alice; `path`: what her PATH has before the usual one."""
        common = [
            "--store",
            str(self.store),
            "--key",
            self.user.name,
            "--env",
            str(self.env_prefix),
        ]
        argv = [str(self.tool / "bin" / "pkgckpt"), *args, *common]
        if args[0] == "restore":
            argv += ["--installer", installer, "--no-index", "--find-links", str(self.wheels)]
        env = {
            "PATH": f"{path}{self.tool / 'bin'}:/usr/bin:/bin",
            "XDG_RUNTIME_DIR": str(self.home / "run"),
            "TMPDIR": str(cwd if cwd != "/" else self.home / "tmp"),
        }
        return self.user.run(argv, cwd=cwd, env=env, timeout=300)

    def installed(self) -> set[str]:
        return {p.name.split("-")[0] for p in self.site.glob("*.dist-info")}


@pytest.fixture
def victim(alice: User, tool: Path) -> Iterator[Alice]:
    a = Alice(alice, tool)
    try:
        yield a
    finally:
        shutil.rmtree(a.home, ignore_errors=True)


def test_nothing_bob_plants_in_a_shared_tmp_runs_when_alice_works_there(
    victim: Alice, bob: User, shared_tmp: Path
) -> None:
    """bob's json.py (the probe), uv.toml (no-index + his wheel), pip/__main__.py and
    sitecustomize.py in the shared /tmp run nothing when alice runs `status` and `restore`
    there (her TMPDIR too), and her packages come from her own wheels."""
    markers = shared_tmp / "markers"
    bob.run(["mkdir", "-m", "0777", str(markers)], check=True)
    plants = {
        "json.py": "json",
        "sitecustomize.py": "sitecustomize",
        "pip/__init__.py": "pip-init",
        "pip/__main__.py": "pip-main",
    }
    for relative, tag in plants.items():
        path = shared_tmp / relative
        if not path.parent.exists():
            bob.run(["mkdir", str(path.parent)], check=True)
        code = f"open({str(markers / tag)!r}, 'w').close()\n"
        bob.run(["sh", "-c", 'printf "%s" "$1" > "$2"', "-", code, str(path)], check=True)
    bob_wheels = shared_tmp / "bobwheels"
    bob.run(["mkdir", str(bob_wheels)], check=True)
    for name in ("alpha", "gamma"):
        wheel = evil_wheel(name, "1.0", bob_wheels, markers / f"pth-{name}")
        os.chown(wheel, bob.uid, bob.gid)
    toml = f'no-index = true\nfind-links = ["{bob_wheels}"]\n'
    bob.run(
        ["sh", "-c", 'printf "%s" "$1" > "$2"', "-", toml, str(shared_tmp / "uv.toml")], check=True
    )

    victim.put(1, Package(name="alpha", version="1.0"))
    status = victim.pkgckpt("status", cwd=shared_tmp)
    assert status.returncode == 0, (status.stdout, status.stderr)
    restored = victim.pkgckpt("restore", cwd=shared_tmp)
    assert restored.returncode == 0, (restored.stdout, restored.stderr)
    victim.put(2, Package(name="alpha", version="1.0"), Package(name="gamma", version="1.0"))
    with_pip = victim.pkgckpt("restore", cwd=shared_tmp, installer="pip")
    assert with_pip.returncode == 0, (with_pip.stdout, with_pip.stderr)

    assert victim.installed() == {"alpha", "gamma"}
    assert not list(victim.site.glob("*_evil.pth")), "bob's wheel was installed"
    ran = sorted(p.name for p in markers.iterdir())
    assert ran == [], f"planted code ran as alice: {ran}"


def test_a_relative_path_entry_finds_none_of_bobs_programs(
    victim: Alice, bob: User, shared_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice's PATH starts with `.` (or an empty entry, as `PATH=$EXTRA:$PATH` leaves with
    EXTRA unset): both name the working directory. bob's `uv`, `R`, `Rscript` and `git` in
    the shared /tmp she works in are never picked (shutil.which picked them, and her
    restore then failed to start `./uv` from its private working directory): `status`
    and `restore` run there find her own programs, and nothing of bob's runs."""
    markers = shared_tmp / "markers"
    bob.run(["mkdir", "-m", "0777", str(markers)], check=True)
    for name in ("uv", "R", "Rscript", "git"):
        script = f"#!/bin/sh\ntouch {markers / name}\nexit 0\n"
        path = shared_tmp / name
        bob.run(["sh", "-c", 'printf "%s" "$1" > "$2"', "-", script, str(path)], check=True)
        bob.run(["chmod", "0755", str(path)], check=True)
    # What shutil.which picks for her, standing there: bob's.
    with monkeypatch.context() as here:
        here.chdir(shared_tmp)
        assert shutil.which("uv", path=".:/nonexistent") == "./uv"
        assert shutil.which("uv", path=":/nonexistent") == "uv"

    victim.put(1, Package(name="alpha", version="1.0"))
    status = victim.pkgckpt("status", cwd=shared_tmp, path=".:")
    assert status.returncode == 0, (status.stdout, status.stderr)
    restored = victim.pkgckpt("restore", cwd=shared_tmp, path=".:")
    assert restored.returncode == 0, (restored.stdout, restored.stderr)
    assert victim.installed() == {"alpha"}
    ran = sorted(p.name for p in markers.iterdir())
    assert ran == [], f"planted programs ran as alice: {ran}"


@pytest.fixture
def team(alice: User, bob: User) -> Iterator[str]:
    """A group holding alice and bob, as on a shared project directory."""
    name = f"pkcteam{secrets.token_hex(3)}"
    subprocess.run(["groupadd", name], check=True)
    try:
        for user in (alice, bob):
            subprocess.run(["usermod", "-aG", name, user.name], check=True)
        yield name
    finally:
        subprocess.run(["groupdel", name], check=False)


@pytest.mark.parametrize("where", ["group-writable file", "world-writable directory"])
def test_wheel_bob_replaced_at_alices_recorded_path_is_refused(
    where: str, victim: Alice, bob: User, shared_tmp: Path, team: str
) -> None:
    """bob replaces the wheel at the `file://` path alice's manifest records: her restore
    refuses that package with the reason (exit 3), installs the rest, and bob's code never
    runs."""
    markers = shared_tmp / "markers"
    markers.mkdir(mode=0o777)
    markers.chmod(0o777)
    if where == "group-writable file":
        # A team directory: alice's wheel, writable by the group bob is in, owned by alice.
        place = shared_tmp / "team"
        place.mkdir()
        os.chown(place, 0, grp.getgrnam(team).gr_gid)
        place.chmod(0o2775)
    else:
        # alice keeps wheels in a directory she made world-writable in the shared /tmp.
        place = shared_tmp / "alice-wheels"
        place.mkdir()
        os.chown(place, victim.user.uid, victim.user.gid)
        place.chmod(0o777)
    wheel = build_wheel(Dist("solo", "2.0"), place)
    os.chown(wheel, victim.user.uid, grp.getgrnam(team).gr_gid)
    wheel.chmod(0o664)
    recorded = UrlSource(
        url=wheel.as_uri(), hashes={"sha256": hashlib.sha256(wheel.read_bytes()).hexdigest()}
    )
    victim.put(
        1,
        Package(name="alpha", version="1.0"),
        Package(name="solo", version="2.0", source=recorded),
    )

    staging = shared_tmp / "bob-staging"
    bob.run(["mkdir", str(staging)], check=True)
    evil = evil_wheel("solo", "2.0", staging, markers / "pth-solo")
    os.chown(evil, bob.uid, bob.gid)
    evil_bytes = evil.read_bytes()
    if where == "group-writable file":
        replaced = bob.run(["sh", "-c", 'cat "$1" > "$2"', "-", str(evil), str(wheel)])
        expect = f"{wheel} has changed since checkpoint: its sha256 is not the one recorded"
    else:
        replaced = bob.run(["mv", "-f", str(evil), str(wheel)])
        expect = f"{wheel} is owned by {bob.name} (uid {bob.uid}), not by you or root"
    assert replaced.returncode == 0, replaced.stderr
    assert wheel.read_bytes() == evil_bytes

    out = victim.pkgckpt("restore", "--json")
    assert out.returncode == 3, (out.stdout, out.stderr)
    report = json.loads(out.stdout)
    failures = {f["name"]: f["message"] for e in report["environments"] for f in e["failed"]}
    assert failures == {"solo": expect}
    assert victim.installed() == {"alpha"}
    assert not list(markers.iterdir()), "bob's wheel ran as alice"


def evil_project(name: str, version: str, root: Path, marker: Path) -> Path:
    """A source tree of `name` whose build backend writes `marker` when it runs."""
    project(name, version, root)
    backend = root / "backend.py"
    backend.write_text(f"open({str(marker)!r}, 'w').close()\n" + backend.read_text())
    return root


@pytest.mark.parametrize("plant", ["directory", "symlink", "root's directory in bob's"])
def test_a_subdirectory_bob_put_under_alices_recorded_directory_is_refused(
    plant: str, victim: Alice, bob: User, shared_tmp: Path
) -> None:
    """alice's manifest records a project as `mine`, a subdirectory of the shared /tmp (the
    recorded path itself is root's and sticky, so it passes): what the installer is given
    is the subdirectory, and that is what is checked. bob's directory there, his symlink
    there, or a root-owned directory inside a directory of his (which he can swap after
    the check) is refused with the reason (exit 3), the rest is installed, and bob's build
    backend never runs."""
    markers = shared_tmp / "markers"
    markers.mkdir()
    markers.chmod(0o777)
    mine = shared_tmp / "mine"
    subdirectory = "mine"
    owned_by_bob = f"is owned by {bob.name} (uid {bob.uid}), not by you or root"
    if plant == "directory":
        chown_tree(evil_project("mine", "0.3", mine, markers / "backend"), bob)
        expect = f"{mine} {owned_by_bob}"
    elif plant == "symlink":
        theirs = chown_tree(evil_project("mine", "0.3", shared_tmp / "bob-src", markers / "b"), bob)
        bob.run(["ln", "-s", str(theirs), str(mine)], check=True)
        expect = f"{mine}: {theirs} {owned_by_bob}"
    else:
        bobs = shared_tmp / "bobs"
        bob.run(["mkdir", str(bobs)], check=True)
        project("mine", "0.3", bobs / "mine")  # root's: the check of it alone ends the walk
        subdirectory = "bobs/mine"
        expect = f"{bobs} {owned_by_bob}"
    recorded = DirectorySource(path=str(shared_tmp), subdirectory=subdirectory)
    victim.put(
        1,
        Package(name="alpha", version="1.0"),
        Package(name="mine", version="0.3", source=recorded),
    )

    out = victim.pkgckpt("restore", "--json")
    assert not list(markers.iterdir()), "bob's build backend ran as alice"
    assert out.returncode == 3, (out.stdout, out.stderr)
    report = json.loads(out.stdout)
    failures = {f["name"]: f["message"] for e in report["environments"] for f in e["failed"]}
    assert failures == {"mine": expect}
    assert victim.installed() == {"alpha"}


def r_restore_refused(victim: Alice, lib: Path, marker: Path) -> dict[str, str]:
    """alice's R restore of `lib`, which must refuse (exit 3) without running bob's code
    (`marker` unwritten): the failures it reports, by package."""
    argv = [str(victim.tool / "bin" / "pkgckpt"), "restore", "--json", "--r-lib", str(lib)]
    argv += ["--store", str(victim.store), "--key", victim.user.name]
    env = {
        "PATH": f"{victim.tool / 'bin'}:/usr/bin:/bin",
        "XDG_RUNTIME_DIR": str(victim.home / "run"),
        "TMPDIR": str(victim.home / "tmp"),
    }
    out = victim.user.run(argv, env=env, timeout=300)
    assert not marker.exists(), "bob's R code ran as alice"
    assert out.returncode == 3, (out.stdout, out.stderr)
    report = json.loads(out.stdout)
    return {f["name"]: f["message"] for e in report["environments"] for f in e["failed"]}


@pytest.mark.skipif(
    shutil.which("Rscript") is None or shutil.which("R") is None,
    reason="Rscript or R not found: R is not installed",
)
@pytest.mark.parametrize("recorded", ["directory", "subdirectory"])
def test_an_r_package_bob_recreated_at_alices_recorded_directory_is_refused(
    recorded: str, victim: Alice, bob: User, shared_tmp: Path
) -> None:
    """alice installed ckpt.base with `remotes::install_local("/tmp/mypkg")` (recorded as
    that directory, or as `mypkg` in /tmp); bob has since made /tmp/mypkg with that name
    and version. Her R restore refuses it with the reason (exit 3) and installs her own
    directory's package beside it; bob's R code, which R CMD INSTALL would run as her,
    never runs."""
    from pkgckpt.scan.r import r_environment

    markers = shared_tmp / "markers"
    markers.mkdir()
    markers.chmod(0o777)
    marker = markers / "evil.R"
    evil = shared_tmp / "mypkg"
    shutil.copytree(REPO / "tests" / "rpkgs" / "ckpt.base", evil)
    (evil / "R" / "evil.R").write_text(f'cat("ran", file = "{marker}")\n')
    chown_tree(evil, bob)
    own = shutil.copytree(REPO / "tests" / "rpkgs" / "ckptGone", victim.home / "src" / "gone")
    lib = victim.home / "rlib"
    lib.mkdir()
    chown_tree(victim.home, victim.user)
    if recorded == "directory":
        source = DirectorySource(path=str(evil))
    else:
        source = DirectorySource(path=str(shared_tmp), subdirectory="mypkg")
    victim.put(
        1,
        Package(name="ckpt.base", version="1.0.0", source=source),
        Package(name="ckptGone", version="1.0", source=DirectorySource(path=str(own))),
        env=r_environment(lib),
    )

    failures = r_restore_refused(victim, lib, marker)
    owned_by_bob = f"is owned by {bob.name} (uid {bob.uid}), not by you or root"
    assert failures == {"ckpt.base": f"{evil} {owned_by_bob}"}
    assert sorted(p.name for p in lib.iterdir()) == ["ckptGone"]


def r_tarball(package_dir: Path, dest: Path) -> Path:
    """A source tarball of the package at `package_dir`, its one top directory the
    package's name, as R CMD build makes it."""
    out = dest / f"{package_dir.name}_1.0.0.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(package_dir, arcname=package_dir.name)
    return out


@pytest.mark.skipif(
    shutil.which("Rscript") is None or shutil.which("R") is None,
    reason="Rscript or R not found: R is not installed",
)
@pytest.mark.parametrize("recorded", ["its sha256", "no sha256"])
def test_an_r_tarball_bob_rewrote_at_alices_recorded_file_url_is_refused(
    recorded: str, victim: Alice, bob: User, shared_tmp: Path, team: str
) -> None:
    """alice installed ckpt.base with `remotes::install_url()` from a `file://` tarball in
    a team directory, writable by the group bob is in; bob has since written his own
    package over it. Her R restore refuses it with the reason (exit 3), whether the
    checkpoint recorded its sha256 or not (remotes records none), and installs her other
    package; bob's R code, which R CMD INSTALL would run as her, never runs."""
    from pkgckpt.scan.r import r_environment

    markers = shared_tmp / "markers"
    markers.mkdir()
    markers.chmod(0o777)
    marker = markers / "evil.R"
    place = shared_tmp / "team"
    place.mkdir()
    os.chown(place, 0, grp.getgrnam(team).gr_gid)
    place.chmod(0o2775)
    tarball = r_tarball(rpkgs.stage("ckpt.base", "1.0.0", shared_tmp / "good"), place)
    os.chown(tarball, victim.user.uid, grp.getgrnam(team).gr_gid)
    tarball.chmod(0o664)
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    source = UrlSource(
        url=tarball.as_uri(), hashes={"sha256": digest} if recorded == "its sha256" else {}
    )
    own = shutil.copytree(REPO / "tests" / "rpkgs" / "ckptGone", victim.home / "src" / "gone")
    lib = victim.home / "rlib"
    lib.mkdir()
    chown_tree(victim.home, victim.user)
    victim.put(
        1,
        Package(name="ckpt.base", version="1.0.0", source=source),
        Package(name="ckptGone", version="1.0", source=DirectorySource(path=str(own))),
        env=r_environment(lib),
    )

    staging = shared_tmp / "bob-staging"
    evil_dir = rpkgs.stage("ckpt.base", "1.0.0", staging)
    (evil_dir / "R" / "evil.R").write_text(f'cat("ran", file = "{marker}")\n')
    evil = chown_tree(r_tarball(evil_dir, staging), bob)
    replaced = bob.run(["sh", "-c", 'cat "$1" > "$2"', "-", str(evil), str(tarball)])
    assert replaced.returncode == 0, replaced.stderr
    assert tarball.read_bytes() == evil.read_bytes()

    failures = r_restore_refused(victim, lib, marker)
    if recorded == "its sha256":
        expect = f"{tarball} has changed since checkpoint: its sha256 is not the one recorded"
    else:
        expect = f"no sha256 of {tarball} was recorded at checkpoint, so it cannot be verified"
    assert failures == {"ckpt.base": expect}
    assert sorted(p.name for p in lib.iterdir()) == ["ckptGone"]


def kernel_status(victim: Alice, python: Path) -> subprocess.CompletedProcess[str]:
    """alice's `pkgckpt status` with kernel discovery, her one kernelspec naming `python`."""
    data = victim.home / "jupyter"
    spec = json.dumps({"argv": [str(python), "-m", "ipykernel_launcher"], "language": "python"})
    victim.run_as(["mkdir", "-p", str(data / "kernels" / "k")])
    victim.run_as(["sh", "-c", 'printf "%s" "$1" > "$2"', "-", spec,
                   str(data / "kernels" / "k" / "kernel.json")])  # fmt: skip
    pkgckpt = str(victim.tool / "bin" / "pkgckpt")
    victim.run_as([pkgckpt, "store", "init", str(victim.store)])
    env = {
        "JUPYTER_DATA_DIR": str(data),
        "PKGCKPT_DISCOVER": "kernels",
        "XDG_RUNTIME_DIR": str(victim.home / "run"),
    }
    name = victim.user.name
    return victim.user.run([pkgckpt, "status", "--store", str(victim.store), "--key", name],
                           env=env, cwd=victim.home)  # fmt: skip


def test_a_kernel_venvs_python3_bob_can_write_is_never_run(
    victim: Alice, bob: User, shared_tmp: Path
) -> None:
    """alice's kernel names her venv's bin/python; its bin/python3, which tracking the venv
    would start, is open to everyone and bob fills it. `pkgckpt status` (discovery on)
    reports the venv as not tracked, with why, and bob's code never runs as alice."""
    markers = shared_tmp / "markers"
    bob.run(["mkdir", "-m", "0777", str(markers)], check=True)
    venv = shared_tmp / "alice-env"
    victim.run_as([str(victim.tool / "bin" / "python"), "-m", "venv", "--without-pip", str(venv)])
    python3 = venv / "bin" / "python3"
    victim.run_as(["sh", "-c", 'rm "$1" && : > "$1" && chmod 0777 "$1"', "-", str(python3)])
    payload = f'#!/bin/sh\ntouch {markers / "python3"}\nexec {venv}/bin/python "$@"\n'
    bob.run(["sh", "-c", 'printf "%s" "$1" > "$2"', "-", payload, str(python3)], check=True)
    status = kernel_status(victim, venv / "bin" / "python")
    assert list(markers.iterdir()) == [], "bob's python3 ran as alice"
    assert status.returncode == 0, (status.stdout, status.stderr)
    assert f"{python3} is writable by group or others" in status.stdout, status.stdout


def test_a_kernel_python_reached_through_bobs_link_is_never_run(
    victim: Alice, bob: User, shared_tmp: Path
) -> None:
    """alice's kernel names her own link, which leads through a link in bob's directory to
    a real interpreter. Checked as written (all hers) and where it ends (root's), it would
    pass, and bob, flipping his link to a script of his between the check and the start,
    gets it run as alice. `pkgckpt status` refuses the kernel for bob's link on the way,
    every time, and bob's script never runs."""
    markers = shared_tmp / "markers"
    bob.run(["mkdir", "-m", "0777", str(markers)], check=True)
    python = os.path.realpath(victim.tool / "bin" / "python")
    bobs = shared_tmp / "bobs"
    evil = f'#!/bin/sh\ntouch {markers / "hop"}\nexec {python} "$@"\n'
    plant = 'mkdir -m 0755 "$1" && printf "%s" "$2" > "$1/evil" && chmod 0755 "$1/evil"'
    bob.run(["sh", "-c", f'{plant} && ln -s "$3" "$1/py"', "-", str(bobs), evil, python],
            check=True)  # fmt: skip
    link = victim.home / "lnk" / "bin" / "python3"
    victim.run_as(["mkdir", "-p", str(link.parent)])
    victim.run_as(["ln", "-s", str(bobs / "py"), str(link)])
    swap = 'ln -sfn "$1" t && mv -T t py'
    flip = f"cd {bobs} && while :; do set -- evil; {swap}; set -- {python}; {swap}; done"
    flipper = subprocess.Popen(["runuser", "-u", bob.name, "--", "sh", "-c", flip])
    try:
        for _ in range(10):
            status = kernel_status(victim, link)
            assert status.returncode == 0, (status.stdout, status.stderr)
            assert f"{bobs} belongs to uid {bob.uid}" in status.stdout, status.stdout
    finally:
        flipper.kill()
        flipper.wait()
    assert list(markers.iterdir()) == [], "bob's script ran as alice"
