"""`own_env`: pkgckpt runs from a venv of its own (A), the notebook server from another
(B). Named, B is tracked as pkgckpt's own environment is, with its user site, and
discovery reads B's Jupyter data directory: the kernels B ships (a venv C) and the
user's (a venv D) are tracked. Real venvs, real interpreters, a real daemon."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_kit import World, eventually, uv_install
from restore_kit import isolated  # noqa: F401 (autouse fixture)
from wheelhouse import Dist, Venv, build_wheel, make_venv

from pkgckpt import config, inventory, manifest
from pkgckpt.errors import UsageError
from pkgckpt.store import Store

MACHINE_VARS = (
    "JUPYTER_PATH", "JUPYTER_DATA_DIR", "XDG_DATA_HOME", "JUPYTER_PREFER_ENV_PATH",
    "CONDA_ENVS_PATH", "CONDA_ENVS_DIRS", "CONDARC", "CONDA_PREFIX", "CONDA_ROOT",
    "CONDA_EXE", "MAMBA_ROOT_PREFIX", "MAMBA_EXE",
)  # fmt: skip


class Image:
    """pkgckpt's venv A runs this test (sys.prefix); B is the server's, C and D kernels'."""

    def __init__(self, tmp: Path) -> None:
        self.world = World.make(tmp)
        self.home = tmp / "home"
        self.home.mkdir()
        for var in MACHINE_VARS:
            self.world.env.pop(var, None)
        self.world.env.update(HOME=str(self.home), PYTHONUSERBASE=str(self.home / ".local"))
        # The server's environment sees the user site, as a conda root or /usr does.
        self.b = Venv(tmp / "server")
        venv = [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages"]
        subprocess.run([*venv, self.b.prefix], check=True, capture_output=True)
        self.c = make_venv(tmp / "shipped-kernel", with_pip=False)
        self.d = make_venv(tmp / "user-kernel", with_pip=False)
        kernelspec(self.b.prefix / "share" / "jupyter", "shipped", self.c.python)
        kernelspec(self.home / ".local" / "share" / "jupyter", "mine", self.d.python)

    def status(self, *flags: str) -> dict[tuple[str, bool], str | None]:
        """(path, user site?) -> error of every Python environment `status` reports."""
        w = self.world
        out = w.pkgckpt("status", "--json", "--store", str(w.store), "--key", w.key, *flags)
        assert out.returncode == 0, out.stderr
        return {
            (e["env"]["path"], e["env"].get("user", False)): e.get("error")
            for e in json.loads(out.stdout)["environments"]
            if e["env"]["kind"] == "python"
        }


def kernelspec(data_dir: Path, name: str, python: Path) -> None:
    """What `python -m ipykernel install [--user|--prefix]` leaves."""
    spec = data_dir / "kernels" / name
    spec.mkdir(parents=True)
    body = {"argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": name, "language": "python"}  # fmt: skip
    (spec / "kernel.json").write_text(json.dumps(body))


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """Under /var/tmp: discovery refuses what lies beneath a /tmp another suite left loose."""
    path = Path(tempfile.mkdtemp(prefix="pkgckpt-own-env-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def image(tmp_path: Path) -> Image:
    return Image(tmp_path)


def test_own_env_is_tracked_with_its_user_site_and_its_kernels(image: Image) -> None:
    """With own_env = B, status tracks B, B's user site, C (B's kernel) and D (the user's
    kernel), and not pkgckpt's venv; without it, as before: pkgckpt's venv and D, no C."""
    a, b, c, d = sys.prefix, str(image.b.prefix), str(image.c.prefix), str(image.d.prefix)
    named = image.status("--own-env", b)
    assert named == {(b, False): None, (b, True): None, (c, False): None, (d, False): None}
    image.world.env["PKGCKPT_OWN_ENV"] = b
    assert image.status() == named
    del image.world.env["PKGCKPT_OWN_ENV"]
    assert image.status() == {(a, False): None, (d, False): None}


def test_the_image_baseline_covers_the_server_environment(image: Image) -> None:
    """`pkgckpt baseline` with own_env = B (the image build's step) records B, its user
    site and the kernels' environments: what the image ships there is not the user's."""
    w = image.world
    out = w.pkgckpt("baseline", "--own-env", str(image.b.prefix), "--output", str(w.tmp / "b.json"))
    assert out.returncode == 0, out.stderr
    baseline = manifest.decode_baseline((w.tmp / "b.json").read_bytes())
    b, c, d = (str(v.prefix) for v in (image.b, image.c, image.d))
    assert {(i.env.path, i.env.user) for i in baseline.environments} == {
        (b, False),
        (b, True),
        (c, False),
        (d, False),
    }


def test_env_still_names_exactly_its_prefixes(image: Image) -> None:
    """--env beside own_env tracks only what --env names: its meaning is unchanged."""
    d = str(image.d.prefix)
    assert image.status("--own-env", str(image.b.prefix), "--env", d) == {(d, False): None}


@pytest.mark.slow
def test_the_daemon_checkpoints_the_server_and_its_kernels(image: Image, tmp_path: Path) -> None:
    """The daemon with own_env = B records what is installed into C, D and B's user site."""
    wheels = tmp_path / "wheels"
    for name in ("alpha", "beta", "gamma"):
        build_wheel(Dist(name, "1.0"), wheels)
    w = image.world
    d = w.daemon("--own-env", str(image.b.prefix), "--store", str(w.store), "--key", w.key,
                 "--quiet-ms", "100")  # fmt: skip
    d.start()
    try:
        uv_install(image.c.python, wheels, "alpha==1.0", env=w.env)
        uv_install(image.d.python, wheels, "beta==1.0", env=w.env)
        # `pip install --user` with the server's interpreter (the pip it sees is its base's).
        subprocess.run(
            [image.b.python, "-m", "pip", "install", "--user", "--no-index", "--find-links",
             wheels, "gamma==1.0"],
            check=True, capture_output=True, env=w.env,
        )  # fmt: skip
        want = {
            (str(image.c.prefix), False): ["alpha==1.0"],
            (str(image.d.prefix), False): ["beta==1.0"],
            (str(image.b.prefix), True): ["gamma==1.0"],
        }
        eventually(lambda: recorded(w) == want, what=f"{want} recorded")
    finally:
        d.close()


def recorded(world: World) -> dict[tuple[str, bool], list[str]]:
    found = Store(world.store, world.key).read()
    if found is None:
        return {}
    return {
        (e.env.path, e.env.user): sorted(f"{p.name}=={p.version}" for p in (*e.added, *e.changed))
        for e in found.body.environments
        if e.added or e.changed
    }


@pytest.mark.parametrize("what", ["plain directory", "missing", "bin of a venv"])
def test_own_env_that_is_no_python_prefix_is_a_usage_error(
    image: Image, tmp_path: Path, what: str
) -> None:
    """A path that is not a Python environment's prefix is refused, exit 2, saying so, by
    the click commands and by restore's own parser alike."""
    plain = tmp_path / "plain"
    plain.mkdir()
    path = {
        "plain directory": str(plain),
        "missing": str(tmp_path / "nothing"),
        "bin of a venv": str(image.b.prefix / "bin"),
    }[what]
    w = image.world
    for command in (["status"], ["restore", "--dry-run"], ["daemon"]):
        out = w.pkgckpt(*command, "--own-env", path, "--store", str(w.store), "--key", w.key)
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        assert f"own_env: {path} is not a Python environment" in out.stderr, out.stderr
    with pytest.raises(UsageError, match="is not a Python environment"):
        inventory.own_env(config.load({"own_env": path}, environ={}))


def test_a_directory_holding_another_environments_interpreter_is_refused(image: Image) -> None:
    """bin/python3 linked to an interpreter elsewhere is that environment's: the directory
    is no prefix (its interpreter says whose it is), and is refused."""
    other = image.world.tmp / "other"
    (other / "bin").mkdir(parents=True)
    (other / "bin" / "python3").symlink_to(image.b.python)
    cfg = config.load({"own_env": str(other)}, environ={})
    with pytest.raises(UsageError, match=f"belongs to {sys.base_prefix}"):
        inventory.own_env(cfg)
