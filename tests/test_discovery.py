"""Discovery: the environments Jupyter kernelspecs and conda name, found from real files,
real venvs and real interpreters; hostile paths refused before anything is started."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from daemon_kit import Daemon, World, eventually
from restore_kit import isolated  # noqa: F401 (autouse fixture)
from wheelhouse import Dist, Venv, build_wheel, make_venv

from pkgckpt import config, discovery, inventory
from pkgckpt.errors import UsageError
from pkgckpt.store import Store

MACHINE_VARS = (
    "JUPYTER_PATH", "JUPYTER_DATA_DIR", "XDG_DATA_HOME", "PYTHONUSERBASE",
    "JUPYTER_PREFER_ENV_PATH", "CONDA_ENVS_PATH", "CONDA_ENVS_DIRS", "CONDARC",
    "CONDA_PREFIX", "CONDA_ROOT", "CONDA_EXE", "MAMBA_ROOT_PREFIX", "MAMBA_EXE",
)  # fmt: skip
"""The variables through which this machine's kernels and conda environments would leak in."""


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A private directory under /var/tmp rather than /tmp: other suites on a shared test
    machine may leave /tmp without its sticky bit, and discovery then rightly refuses
    everything beneath it."""
    path = Path(tempfile.mkdtemp(prefix="pkgckpt-discovery-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("discovery-wheels")
    for dist in (Dist("alpha", "1.0"), Dist("beta", "1.0"), Dist("gamma", "1.0")):
        build_wheel(dist, out)
    return out


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home of this test's own: no kernelspec or conda environment of the machine's."""
    h = tmp_path / "home"
    h.mkdir()
    for var in MACHINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(h))
    return h


def kernelspec(data_dir: Path, name: str, argv0: str, language: str = "python") -> Path:
    """What `python -m ipykernel install --user --name NAME` leaves: kernels/NAME/kernel.json."""
    spec = data_dir / "kernels" / name
    spec.mkdir(parents=True)
    body = {"argv": [argv0, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": name, "language": language}  # fmt: skip
    (spec / "kernel.json").write_text(json.dumps(body))
    return spec


def user_data(home: Path) -> Path:
    return home / ".local" / "share" / "jupyter"


def conda_prefix(venv: Venv) -> Venv:
    """A real Python environment that conda would list: it has conda-meta/."""
    (venv.prefix / "conda-meta").mkdir()
    (venv.prefix / "conda-meta" / "history").write_text("")
    return venv


# -- the hostile-path check -------------------------------------------------------------


def test_unsafe_refuses_relative_missing_and_loose_paths(tmp_path: Path) -> None:
    """A relative path, a missing one and one under a group-writable directory are refused."""
    loose = tmp_path / "loose"
    (loose / "env").mkdir(parents=True)
    loose.chmod(0o775)
    tight = tmp_path / "tight"
    tight.mkdir(mode=0o755)
    tight.chmod(0o755)
    assert discovery.unsafe(Path("venv/bin/python")) == "not an absolute path"
    assert discovery.unsafe(tmp_path / "nope") == "missing"
    assert discovery.unsafe(loose / "env") == f"{loose} is writable by group or others"
    assert discovery.unsafe(tight) is None


def test_unsafe_follows_links_and_checks_where_they_lead(tmp_path: Path) -> None:
    """A link of ours leading into a group-writable directory is refused for its target."""
    loose = tmp_path / "loose"
    (loose / "python").mkdir(parents=True)
    loose.chmod(0o777)
    link = tmp_path / "python"
    link.symlink_to(loose / "python")
    assert discovery.unsafe(link) == f"{loose} is writable by group or others"


def test_unsafe_checks_each_link_on_the_way_not_only_both_ends(tmp_path: Path) -> None:
    """A link of ours leading through a link in a group-writable directory to a safe
    target is refused for that directory: someone can point the link in it elsewhere
    between the check and the use. Relative targets, `..` and link loops are walked as
    the kernel walks them."""
    tight = tmp_path / "tight"
    (tight / "bin").mkdir(parents=True)
    python = tight / "bin" / "python"
    python.write_text("")
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    (loose / "hop").symlink_to(python)
    (tmp_path / "mine").symlink_to(loose / "hop")
    assert discovery.unsafe(tmp_path / "mine") == f"{loose} is writable by group or others"
    (tmp_path / "rel").symlink_to("tight/bin/../bin/python")
    assert discovery.unsafe(tmp_path / "rel") is None
    (tight / "up").symlink_to("../loose/hop")
    assert discovery.unsafe(tight / "up") == f"{loose} is writable by group or others"
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    assert discovery.unsafe(tmp_path / "a") == "cannot be read (Too many levels of symbolic links)"


def test_unsafe_accepts_a_sticky_world_writable_directory(tmp_path: Path) -> None:
    """/tmp-like directories (sticky) are fine: others cannot replace what is ours there."""
    sticky = tmp_path / "sticky"
    (sticky / "env").mkdir(parents=True)
    sticky.chmod(0o1777)
    assert discovery.unsafe(sticky / "env") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_unsafe_refuses_a_directory_of_another_user(tmp_path: Path) -> None:
    """An environment whose directory belongs to another user is refused."""
    other = tmp_path / "other"
    other.mkdir()
    os.chown(other, 54321, 54321)
    assert discovery.unsafe(other) == f"{other} belongs to uid 54321, neither this user nor root"


# -- Jupyter's data path ----------------------------------------------------------------


@pytest.mark.parametrize(
    "variables",
    [
        {},
        {"JUPYTER_PATH": "/a/share/jupyter:/b/share/jupyter/"},
        {"JUPYTER_DATA_DIR": "/data/jupyter", "JUPYTER_PREFER_ENV_PATH": "0"},
        {"XDG_DATA_HOME": "/xdg", "JUPYTER_PREFER_ENV_PATH": "yes"},
        {"PYTHONUSERBASE": "/userbase"},
    ],
)
def test_jupyter_path_is_jupyter_cores(home: Path, variables: dict[str, str]) -> None:
    """The data directories, in order, are the ones jupyter_core.paths.jupyter_path() gives."""
    env = {**os.environ, **variables}
    code = "import json, jupyter_core.paths as p; print(json.dumps(p.jupyter_path()))"
    theirs = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    ours = [str(p) for p in discovery.jupyter_path(env)]
    assert ours == json.loads(theirs.stdout)


# -- kernelspecs --------------------------------------------------------------------------


def test_a_kernelspec_names_the_venv_of_its_interpreter(home: Path, tmp_path: Path) -> None:
    """A kernelspec whose argv[0] is another venv's python finds that venv, by asking it."""
    kernel_env = make_venv(tmp_path / "kernel-env", with_pip=False)
    kernelspec(user_data(home), "mine", str(kernel_env.python))
    found = discovery.discover(["kernels"])
    assert [f.prefix for f in found.found] == [kernel_env.prefix]
    assert found.unreadable == ()
    assert user_data(home) / "kernels" / "mine" in found.watch


def test_a_venv_named_through_a_link_too_is_tracked_under_both_names(
    home: Path, tmp_path: Path
) -> None:
    """Two kernels name one venv, one through a link to its directory: both names are
    tracked, as the record and restore match environments by path. One name kept would
    be the one found first, which changes with the kernelspecs: restore would then skip
    the record made under the other."""
    real = make_venv(tmp_path / "real", with_pip=False)
    (tmp_path / "link").symlink_to(real.prefix)
    kernelspec(user_data(home), "z", str(real.python))
    kernelspec(user_data(home), "a", str(tmp_path / "link" / "bin" / "python"))
    cfg = config.load({}, environ={"PKGCKPT_DISCOVER": "kernels"})
    found = {t.env.path for t in inventory.targets(cfg) if not t.env.user}
    assert {str(real.prefix), str(tmp_path / "link")} <= found


def test_an_earlier_data_dir_hides_a_kernel_of_the_same_name(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in Jupyter, the first kernel of a name wins: the hidden one is not tracked."""
    first = make_venv(tmp_path / "first", with_pip=False)
    second = make_venv(tmp_path / "second", with_pip=False)
    kernelspec(tmp_path / "jp", "k", str(first.python))
    kernelspec(user_data(home), "k", str(second.python))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jp"))
    assert [f.prefix for f in discovery.discover(["kernels"]).found] == [first.prefix]


def test_kernels_are_listed_as_jupyter_client_lists_them(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As jupyter_client's `find_kernel_specs`: a link loop among the kernels is passed
    over, not the kernels beside it; a name outside jupyter_client's rule is listed (it
    only warns); a directory without kernel.json is no kernel and hides no later one of
    its name (and is watched, for the kernel.json written after it)."""
    envs = {n: make_venv(tmp_path / n, with_pip=False) for n in ("good", "odd", "shared")}
    kernels = user_data(home) / "kernels"
    kernelspec(user_data(home), "good", str(envs["good"].python))
    kernelspec(user_data(home), "Python (odd)+gpu", str(envs["odd"].python))
    kernelspec(user_data(home), "shared", str(envs["shared"].python))
    (kernels / "loop").symlink_to("loop")
    early = tmp_path / "jp" / "kernels" / "shared"
    early.mkdir(parents=True)
    (early / "logo-64x64.png").write_bytes(b"")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jp"))
    found = discovery.discover(["kernels"])
    assert sorted(f.prefix for f in found.found) == sorted(e.prefix for e in envs.values())
    assert found.unreadable == ()
    assert early in found.watch


def test_a_bare_python_kernel_belongs_to_the_prefix_that_ships_it(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ipykernel's own kernelspec ({prefix}/share/jupyter, argv[0] "python") is that prefix's."""
    env = make_venv(tmp_path / "env", with_pip=False)
    kernelspec(env.prefix / "share" / "jupyter", "python3", "python")
    monkeypatch.setenv("JUPYTER_PATH", str(env.prefix / "share" / "jupyter"))
    assert [f.prefix for f in discovery.discover(["kernels"]).found] == [env.prefix]


def test_a_bare_python_kernel_in_the_user_data_dir_names_no_environment_of_home(
    home: Path, tmp_path: Path
) -> None:
    """Jupyter runs a bare "python3" with the server's own interpreter, wherever the
    kernelspec is: one in ~/.local/share/jupyter is not taken for ~/.local/bin/python3 (an
    interpreter `uv python install` puts there), and status says why it is not tracked."""
    other = make_venv(tmp_path / "uv-python", with_pip=False)
    (home / ".local" / "bin").mkdir(parents=True)
    (home / ".local" / "bin" / "python3").symlink_to(other.python)
    kernelspec(user_data(home), "copied", "python3")
    found = discovery.discover(["kernels"])
    assert found.found == ()
    (problem,) = found.unreadable
    assert problem.path == str(user_data(home) / "kernels" / "copied")
    assert "the Jupyter server's own interpreter" in problem.reason


def test_kernels_of_other_languages_are_not_python_environments(home: Path) -> None:
    """An IRkernel spec is neither tracked as Python nor reported as unreadable."""
    kernelspec(user_data(home), "ir", "/usr/lib/R/bin/R", language="R")
    assert discovery.discover(["kernels"]) == discovery.Discovered(
        watch=tuple(discovery.discover(["kernels"]).watch)
    )


def test_a_kernel_interpreter_in_a_loose_directory_is_never_started(
    home: Path, tmp_path: Path
) -> None:
    """argv[0] under a group-writable directory is reported, and the file is not run."""
    loose = tmp_path / "loose"
    (loose / "bin").mkdir(parents=True)
    loose.chmod(0o777)
    canary = tmp_path / "ran"
    planted = loose / "bin" / "python"
    planted.write_text(f"#!/bin/sh\ntouch {canary}\n")
    planted.chmod(0o755)
    kernelspec(user_data(home), "planted", str(planted))
    found = discovery.discover(["kernels"])
    assert found.found == ()
    (problem,) = found.unreadable
    assert "writable by group or others" in problem.reason
    assert not canary.exists()


def _group_writable(prefix: Path) -> None:
    """As docker-stacks' fix-permissions leaves /opt/conda: every directory g+w."""
    for path in (prefix, *prefix.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o775)


def _own(prefix: Path) -> discovery.Own:
    return discovery.Own(prefix=prefix, base_prefix=prefix, user_site=False)


def test_the_own_environments_kernels_need_no_word_however_open_it_is(
    home: Path, tmp_path: Path
) -> None:
    """The environment pkgckpt takes as its own (`own_env`, trusted as configured) may be
    group-writable, as docker-stacks' /opt/conda is: its own kernelspec, and a user's
    kernelspec naming its interpreter, name an environment tracked anyway; its R kernel
    is no Python environment. None is an error in `status`, and its interpreter is not
    started for them."""
    own = tmp_path / "conda"
    (own / "bin").mkdir(parents=True)
    canary = tmp_path / "ran"
    python = own / "bin" / "python3.11"
    python.write_text(f"#!/bin/sh\ntouch {canary}\n")
    python.chmod(0o755)
    kernelspec(own / "share" / "jupyter", "python3", "python")
    kernelspec(own / "share" / "jupyter", "ir", str(own / "lib" / "R" / "bin" / "R"), "R")
    kernelspec(user_data(home), "base", str(python))
    _group_writable(own)
    found = discovery.discover(["kernels"], own=_own(own))
    assert (found.found, found.unreadable) == ((), ())
    assert not canary.exists()


def test_a_kernelspec_in_the_open_own_environment_naming_another_is_refused(
    home: Path, tmp_path: Path
) -> None:
    """What the open environment's kernelspec names elsewhere is not trusted with it."""
    own = tmp_path / "conda"
    other = make_venv(tmp_path / "other", with_pip=False)
    kernelspec(own / "share" / "jupyter", "planted", str(other.python))
    _group_writable(own)
    found = discovery.discover(["kernels"], own=_own(own))
    assert found.found == ()
    (problem,) = found.unreadable
    assert problem.reason.startswith("kernel.json: ") and "writable by group" in problem.reason


def test_a_kernel_prefix_with_a_loose_python3_is_not_tracked(home: Path, tmp_path: Path) -> None:
    """A kernel names a venv's bin/python, but tracking the venv starts its bin/python3:
    one that others may write is reported with the prefix, and never run."""
    venv = make_venv(tmp_path / "env", with_pip=False)
    canary = tmp_path / "ran"
    planted = venv.prefix / "bin" / "python3"
    planted.unlink()
    planted.write_text(f'#!/bin/sh\ntouch {canary}\nexec {venv.prefix}/bin/python "$@"\n')
    planted.chmod(0o777)
    kernelspec(user_data(home), "k", str(venv.prefix / "bin" / "python"))
    found = discovery.discover(["kernels"])
    assert found.found == ()
    assert [(u.path, u.reason) for u in found.unreadable] == [
        (str(venv.prefix), f"{planted} is writable by group or others")
    ]
    cfg = config.load({}, environ={})
    assert str(venv.prefix) not in {t.env.path for t in inventory.targets(cfg, found)}
    assert not canary.exists()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{", "kernel.json is not JSON"),
        ('{"language": "python", "argv": []}', "kernel.json has no argv[0]"),
        ('{"language": "python", "argv": ["bin/python"]}', "argv[0] 'bin/python' is not"),
        ('{"language": "python", "argv": ["/bin/sh", "-c"]}', "argv[0] '/bin/sh' is not a Py"),
    ],
)
def test_a_bad_kernelspec_is_reported_not_fatal(home: Path, text: str, why: str) -> None:
    """A damaged kernel.json leaves that kernel out with the reason; discovery goes on."""
    spec = user_data(home) / "kernels" / "bad"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(text)
    (problem,) = discovery.discover(["kernels"]).unreadable
    assert problem.reason.startswith(why)


# -- conda --------------------------------------------------------------------------------


def test_conda_environments_from_the_list_and_the_envs_dirs(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """environments.txt, .condarc's envs_dirs and CONDA_ENVS_PATH each name an environment."""
    listed = conda_prefix(make_venv(tmp_path / "listed", with_pip=False))
    (home / ".conda").mkdir()
    (home / ".conda" / "environments.txt").write_text(f"{listed.prefix}\n\n/nowhere/env\n")
    rc_dir, var_dir = tmp_path / "rc-envs", tmp_path / "var-envs"
    in_rc = conda_prefix(make_venv(rc_dir / "a", with_pip=False))
    in_var = conda_prefix(make_venv(var_dir / "b", with_pip=False))
    (var_dir / "not-an-env").mkdir()
    (home / ".condarc").write_text(f"envs_dirs:\n  - {rc_dir}\nchannels: [x]\n")
    monkeypatch.setenv("CONDA_ENVS_PATH", str(var_dir))
    found = discovery.discover(["conda"])
    assert {f.prefix for f in found.found} == {listed.prefix, in_rc.prefix, in_var.prefix}
    assert [(u.path, u.reason) for u in found.unreadable] == [("/nowhere/env", "missing")]
    assert {home / ".conda", rc_dir, var_dir} <= set(found.watch)


def test_a_bad_envs_dirs_entry_is_reported_not_fatal(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A .condarc entry holding a NUL byte is skipped with a warning, and one naming an
    unknown user's home is left out; the other entries' environments are found."""
    envs = tmp_path / "envs"
    (envs / "e" / "conda-meta").mkdir(parents=True)
    rc = home / ".condarc"
    rc.write_text(f'envs_dirs:\n  - "/var/tmp/a\\0b"\n  - "~nosuchuser-pkgckpt/envs"\n  - {envs}\n')
    monkeypatch.setenv("CONDA_ENVS_PATH", "~nosuchuser-pkgckpt/more")
    with caplog.at_level("WARNING", logger="pkgckpt"):
        found = discovery.discover(["conda"])
    assert [f.prefix for f in found.found] == [envs / "e"]
    assert f"{rc}: envs_dirs entry '/var/tmp/a\\x00b' is not read: it holds a NUL byte" in (
        caplog.messages
    )
    assert not any("\0" in str(p) for p in found.watch)


def test_a_condarc_nested_too_deep_is_skipped_with_a_warning(
    home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A .condarc of 4,000 nested brackets (RecursionError in the YAML parser) is skipped
    like any invalid YAML; the environments listed elsewhere are still found."""
    listed = conda_prefix(make_venv(tmp_path / "listed", with_pip=False))
    (home / ".conda").mkdir()
    (home / ".conda" / "environments.txt").write_text(f"{listed.prefix}\n")
    (home / ".condarc").write_text("envs_dirs: " + "[" * 4000 + "]" * 4000 + "\n")
    with caplog.at_level("WARNING", logger="pkgckpt"):
        found = discovery.discover(["conda"])
    assert [f.prefix for f in found.found] == [listed.prefix]
    assert any("is not valid YAML" in m for m in caplog.messages), caplog.messages


def test_switched_off_sources_find_nothing(home: Path, tmp_path: Path) -> None:
    """`discover` without kernels and conda looks at neither."""
    env = conda_prefix(make_venv(tmp_path / "env", with_pip=False))
    kernelspec(user_data(home), "k", str(env.python))
    (home / ".conda").mkdir()
    (home / ".conda" / "environments.txt").write_text(f"{env.prefix}\n")
    assert discovery.discover(["user-site", "r"]) == discovery.Discovered()
    cfg = config.load({"discover": ("user-site",)}, environ={})
    assert cfg.env == ()
    assert not any(t.env.path == str(env.prefix) for t in inventory.targets(cfg))


def test_an_unknown_discover_source_is_a_usage_error() -> None:
    """`discover = ["kernel"]` (a typo) is refused, naming the known sources."""
    with pytest.raises(UsageError, match="known: kernels, conda, user-site, r"):
        config.load({"discover": ("kernel",)}, environ={})


def test_env_restricts_tracking_to_what_it_names(home: Path, tmp_path: Path) -> None:
    """With --env, no kernelspec environment is tracked."""
    named = make_venv(tmp_path / "named", with_pip=False)
    other = make_venv(tmp_path / "other", with_pip=False)
    kernelspec(user_data(home), "k", str(other.python))
    cfg = config.load({"env": (str(named.prefix),)}, environ={})
    # R libraries are named by --r-lib, not --env (and tracked by default when R is here).
    found = inventory.targets(cfg)
    assert {t.env.path for t in found if t.env.kind != "r"} == {str(named.prefix)}
    cfg = config.load({}, environ={})
    assert str(other.prefix) in {t.env.path for t in inventory.targets(cfg)}


# -- status -------------------------------------------------------------------------------


def test_status_reports_a_missing_env_and_goes_on(tmp_path: Path) -> None:
    """`status --env MISSING --env OK` exits 0, says MISSING is missing, reports OK."""
    world = World.make(tmp_path)
    ok = make_venv(tmp_path / "ok", with_pip=False)
    gone = tmp_path / "gone"
    out = world.pkgckpt("status", "--json", *world.flags(gone, ok.prefix))
    assert out.returncode == 0, out.stderr
    envs = {e["env"]["path"]: e for e in json.loads(out.stdout)["environments"]}
    assert envs[str(gone)]["error"] == "missing (named by --env)"
    assert envs[str(ok.prefix)]["error"] is None


def tracked_once_made(world: World, d: Daemon, gone: Path, wheels: Path) -> None:
    """`gone` made a venv while the daemon `d` runs: tracked, and an install there recorded."""
    made = make_venv(gone)
    eventually(lambda: "tracking " + str(gone) in d.output(), what="tracking")
    made.install(wheels, "beta==1.0")
    eventually(lambda: recorded(world, gone) == ["beta==1.0"], what="beta")


@pytest.mark.slow
def test_a_missing_env_leaves_the_rest_tracked_and_is_tracked_once_made(
    world: World, wheels: Path
) -> None:
    """`--env OK --env GONE`, GONE a venv that was not on the persistent volume: the
    daemon tracks OK and tells why not GONE; once GONE is made again at its path, its
    installs are recorded too, with no restart. `snapshot` and a restore into a new
    container go on with the rest likewise, and restore names GONE's record as missing."""
    ok = make_venv(world.tmp / "ok")
    gone = world.tmp / "gone"
    flags = world.flags(ok.prefix, gone)
    d = world.daemon(*flags, "--quiet-ms", "100")
    d.start()
    try:
        eventually(lambda: "not tracked" in d.output(), what="the missing env reported")
        ok.install(wheels, "alpha==1.0")
        eventually(lambda: recorded(world, ok.prefix) == ["alpha==1.0"], what="alpha")
        asked = world.pkgckpt("snapshot", *flags)
        assert asked.returncode == 0, asked.stderr
        assert "does not track" not in asked.stdout, asked.stdout
        tracked_once_made(world, d, gone, wheels)
    finally:
        d.close()
    shutil.rmtree(gone)
    ok.install(wheels, "gamma==1.0")
    snap = world.pkgckpt("snapshot", *flags)
    assert snap.returncode == 0, snap.stderr
    assert recorded(world, ok.prefix) == ["alpha==1.0", "gamma==1.0"]
    assert recorded(world, gone) == ["beta==1.0"]
    fresh = make_venv(world.tmp / "ok")
    done = world.pkgckpt("restore", "--no-index", "--find-links", str(wheels), *flags)
    assert done.returncode == 0, done.stderr
    assert {"alpha==1.0", "gamma==1.0"} <= set(fresh.freeze())
    assert f"{gone}: 1 recorded package(s), missing" in done.stdout, done.stdout
    assert world.pkgckpt("baseline", "--output", str(world.tmp / "b.json"), *flags).returncode == 1


@pytest.mark.slow
def test_a_daemon_whose_only_env_is_missing_waits_for_it(world: World, wheels: Path) -> None:
    """The one environment a daemon is given, nothing discovered, is not made yet: the
    daemon says it waits for it, and tracks it once it is made, instead of exiting."""
    gone = world.tmp / "gone"
    world.env["PKGCKPT_DISCOVER"] = ""
    d = world.daemon(*world.flags(gone), "--quiet-ms", "100")
    d.start()
    try:
        eventually(lambda: f"waiting for {gone} to be made" in d.output(), what="waiting")
        # A preStop hook meanwhile: the daemon answers, and nothing else is to be done.
        asked = world.pkgckpt("snapshot", *world.flags(gone))
        assert asked.returncode == 0, asked.stderr
        tracked_once_made(world, d, gone, wheels)
    finally:
        d.close()
    # A directory that is there and no environment is a mistake to say, not to wait on.
    empty = world.tmp / "empty"
    empty.mkdir()
    out = world.pkgckpt("daemon", *world.flags(empty), timeout=30)
    assert out.returncode == 2, out.stderr
    assert "nothing to watch" in out.stderr, out.stderr


def test_status_reports_an_unreadable_kernel_environment(tmp_path: Path) -> None:
    """A kernelspec whose interpreter is gone shows in `status` with the reason, exit 0."""
    world = World.make(tmp_path)
    home = tmp_path / "home"
    kernelspec(user_data(home), "gone", str(tmp_path / "gone" / "bin" / "python"))
    world.env.update(HOME=str(home))
    out = world.pkgckpt("status", "--store", str(world.store), "--key", world.key)
    assert out.returncode == 0, out.stderr
    assert f"python {tmp_path / 'gone' / 'bin' / 'python'}:\n    error: interpreter" in out.stdout


# -- the daemon ---------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World.make(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    for var in MACHINE_VARS:
        w.env.pop(var, None)
    w.env.update(HOME=str(home), PYTHONUSERBASE=str(home / ".local"))
    yield w


@contextmanager
def watching(world: World) -> Iterator[Daemon]:
    """The daemon over `world`'s store, discovering as configured, ready; killed at the end
    if it still runs."""
    d = world.daemon("--store", str(world.store), "--key", world.key, "--quiet-ms", "100")
    d.start()
    try:
        yield d
    finally:
        d.close()


def recorded(world: World, prefix: Path) -> list[str]:
    found = Store(world.store, world.key).read()
    if found is None:
        return []
    for d in found.body.environments:
        if d.env.path == str(prefix) and not d.env.user:
            return sorted(f"{p.name}=={p.version}" for p in (*d.added, *d.changed))
    return []


@pytest.mark.slow
def test_pip_install_in_a_kernel_venv_is_checkpointed(world: World, wheels: Path) -> None:
    """`%pip install` in a kernel whose venv is not pkgckpt's is recorded by the daemon."""
    kernel_env = make_venv(world.tmp / "kernel-env")
    kernelspec(user_data(Path(world.env["HOME"])), "analysis", str(kernel_env.python))
    with watching(world):
        # What %pip does: the kernel's own interpreter runs pip.
        kernel_env.install(wheels, "alpha==1.0")
        eventually(lambda: recorded(world, kernel_env.prefix) == ["alpha==1.0"], what="alpha")


@pytest.mark.slow
def test_a_kernelspec_installed_while_the_daemon_runs_is_tracked(
    world: World, wheels: Path
) -> None:
    """A kernelspec that appears later (ipykernel install --user) is tracked, no restart."""
    with watching(world) as d:
        late = make_venv(world.tmp / "late-env")
        # The kernels directory does not exist yet either: the first --user install makes it.
        kernelspec(user_data(Path(world.env["HOME"])), "late", str(late.python))
        eventually(lambda: "tracking " + str(late.prefix) in d.output(), what="tracking")
        late.install(wheels, "beta==1.0")
        eventually(lambda: recorded(world, late.prefix) == ["beta==1.0"], what="beta")


@pytest.mark.slow
def test_a_stop_while_an_interpreter_does_not_answer_still_checkpoints(
    world: World, wheels: Path
) -> None:
    """A kernelspec appears whose interpreter hangs (on a stalled mount): the daemon waits
    for its probe (30 s) when it looks for environments. A SIGTERM meanwhile ends the
    probe, so that the install it saw in another environment is checkpointed within
    shutdown_timeout (it ran out in the probe: exit 1, the install lost)."""
    good = make_venv(world.tmp / "good")
    hang = world.tmp / "hang" / "bin" / "python"
    hang.parent.mkdir(parents=True)
    hang.write_text("#!/bin/sh\nexec sleep 100\n")
    hang.chmod(0o755)
    world.env["PKGCKPT_DISCOVER"] = "kernels"
    data = user_data(Path(world.env["HOME"]))
    kernelspec(data, "good", str(good.python))
    store = ["--store", str(world.store), "--key", world.key]
    d = world.daemon(*store, "--quiet-ms", "100", "--shutdown-timeout", "8")
    d.start()
    try:
        kernelspec(data, "hang", str(hang))
        time.sleep(1)  # the daemon is asking it
        good.install(wheels, "beta==1.0")
        time.sleep(0.5)
        started = time.monotonic()
        assert d.stop(timeout=30) == 0, d.output()
        assert time.monotonic() - started < 8
    finally:
        d.close()
    assert recorded(world, good.prefix) == ["beta==1.0"]


@pytest.mark.slow
def test_status_says_the_daemon_records_a_venv_whose_kernelspec_went(
    world: World, wheels: Path
) -> None:
    """`jupyter kernelspec remove` of a tracked venv's kernel: restore would skip its
    record, which status says, and that the running daemon still records it."""
    kernel_env = make_venv(world.tmp / "kernel-env")
    spec = kernelspec(user_data(Path(world.env["HOME"])), "analysis", str(kernel_env.python))
    with watching(world):
        kernel_env.install(wheels, "alpha==1.0")
        eventually(lambda: recorded(world, kernel_env.prefix) == ["alpha==1.0"], what="alpha")
        shutil.rmtree(spec)
        shown = world.pkgckpt("status", "--store", str(world.store), "--key", world.key)
        assert shown.returncode == 0, shown.stderr
        block = shown.stdout.split(f"python {kernel_env.prefix}:\n", 1)[1]
        assert block.startswith(
            "    restore skips it: not tracked here (use --env PATH or discovery)\n"
            "    the running daemon found it earlier and records its changes\n"
        ), shown.stdout


@pytest.mark.slow
def test_what_a_venv_made_while_the_daemon_runs_held_when_found_is_recorded(
    world: World, wheels: Path
) -> None:
    """The usual way to make a kernel: `python -m venv`, `pip install` what the notebook
    needs, then `ipykernel install --user`. The venv is found only with its kernelspec,
    after the install; made while the daemon ran, it is no image's, so what it holds is
    the user's and recorded (but what making a venv puts there: pip). `status` says
    nothing of a missing baseline for it."""
    with watching(world) as d:
        eventually(lambda: "watching" in d.output(), what="the daemon to start")
        made = make_venv(world.tmp / "made-env")
        made.install(wheels, "alpha==1.0")
        kernelspec(user_data(Path(world.env["HOME"])), "made", str(made.python))
        eventually(lambda: recorded(world, made.prefix) == ["alpha==1.0"], what="alpha")
        shown = world.pkgckpt("status", "--store", str(world.store), "--key", world.key)
        assert shown.returncode == 0, shown.stderr
        assert f"python {made.prefix}:" in shown.stdout
        assert "no baseline" not in shown.stdout, shown.stdout


@pytest.mark.slow
def test_a_venv_older_than_the_daemon_found_later_starts_from_what_it_holds(
    world: World, wheels: Path
) -> None:
    """A venv that was there before the daemon (on the persistent volume, or the image's)
    and that a kernelspec names only later: what it held then is its starting point, as
    before; the installs seen after are recorded."""
    old = make_venv(world.tmp / "old-env")
    old.install(wheels, "alpha==1.0")
    with watching(world) as d:
        eventually(lambda: "watching" in d.output(), what="the daemon to start")
        kernelspec(user_data(Path(world.env["HOME"])), "old", str(old.python))
        eventually(lambda: "tracking " + str(old.prefix) in d.output(), what="tracking")
        old.install(wheels, "beta==1.0")
        eventually(lambda: recorded(world, old.prefix) == ["beta==1.0"], what="beta")


@pytest.mark.slow
def test_a_venv_a_snapshot_recorded_before_the_daemon_found_it_keeps_one_install(
    world: World, wheels: Path
) -> None:
    """`snapshot --env OTHER` records alpha in a venv the daemon does not track; then a
    kernelspec names OTHER and the daemon tracks it. Its first scan starts from what the
    store records: the next generation is beta's, and `history` lists alpha's install
    once. The daemon started OTHER from the record it had read before the snapshot, wrote
    a generation of its own with alpha's install again, and history listed it twice."""
    other = make_venv(world.tmp / "other-env")
    where = ["--store", str(world.store), "--key", world.key]
    with watching(world) as d:
        eventually(lambda: "watching" in d.output(), what="the daemon to start")
        other.install(wheels, "alpha==1.0")
        snap = world.pkgckpt("snapshot", "--env", str(other.prefix), *where)
        assert snap.returncode == 0, snap.stdout + snap.stderr
        assert world.generation() == 1, snap.stdout
        kernelspec(user_data(Path(world.env["HOME"])), "other", str(other.python))
        eventually(lambda: "tracking " + str(other.prefix) in d.output(), what="tracking")
        other.install(wheels, "beta==1.0")
        eventually(lambda: recorded(world, other.prefix) == ["alpha==1.0", "beta==1.0"], what="b")
        assert d.stop() == 0, d.output()
    assert world.generation() == 2
    shown = world.pkgckpt("history", *where)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("install alpha 1.0") == 1, shown.stdout


@pytest.mark.slow
def test_a_conda_environment_created_while_the_daemon_runs_is_tracked(
    world: World, wheels: Path
) -> None:
    """A new line in ~/.conda/environments.txt (conda create) is tracked, no restart."""
    home = Path(world.env["HOME"])
    with watching(world) as d:
        created = conda_prefix(make_venv(world.tmp / "created"))
        (home / ".conda").mkdir()
        (home / ".conda" / "environments.txt").write_text(f"{created.prefix}\n")
        eventually(lambda: "tracking " + str(created.prefix) in d.output(), what="tracking")
        created.install(wheels, "alpha==1.0")
        eventually(lambda: recorded(world, created.prefix) == ["alpha==1.0"], what="alpha")


def test_a_conda_environment_with_a_loose_interpreter_is_not_probed(
    home: Path, tmp_path: Path
) -> None:
    """A listed prefix whose bin/python3 others may write is reported, and not started."""
    prefix = tmp_path / "env"
    (prefix / "conda-meta").mkdir(parents=True)
    (prefix / "bin").mkdir()
    canary = tmp_path / "ran"
    planted = prefix / "bin" / "python3"
    planted.write_text(f"#!/bin/sh\ntouch {canary}\n")
    planted.chmod(0o777)
    (home / ".conda").mkdir()
    (home / ".conda" / "environments.txt").write_text(f"{prefix}\n")
    found = discovery.discover(["conda"])
    assert found.found == ()
    assert [u.reason for u in found.unreadable] == [f"{planted} is writable by group or others"]
    cfg = config.load({}, environ={})
    assert str(prefix) not in {t.env.path for t in inventory.targets(cfg)}
    assert not canary.exists()


@pytest.mark.slow
def test_a_conda_environment_made_in_envs_dirs_while_the_daemon_runs_is_tracked(
    world: World, wheels: Path
) -> None:
    """A new directory in an envs_dirs directory becomes tracked once it has conda-meta/,
    even when nothing lists it in environments.txt."""
    envs = world.tmp / "envs"
    envs.mkdir()
    world.env["CONDA_ENVS_PATH"] = str(envs)
    with watching(world) as d:
        created = make_venv(envs / "made")  # the directory first, conda-meta/ after
        time.sleep(0.5)
        conda_prefix(created)
        eventually(lambda: "tracking " + str(created.prefix) in d.output(), what="tracking")
        created.install(wheels, "beta==1.0")
        eventually(lambda: recorded(world, created.prefix) == ["beta==1.0"], what="beta")


@pytest.mark.slow
def test_a_kernel_venv_made_again_while_the_daemon_runs_is_tracked(
    world: World, wheels: Path
) -> None:
    """A kernelspec whose venv is missing when the daemon starts (a new container, the venv
    was not on the persistent volume) is tracked once `python3 -m venv` makes it again at
    its path: nothing rewrites the kernelspec, the venv's own appearance brings discovery
    back."""
    prefix = world.tmp / "envs" / "analysis"
    python = prefix / "bin" / "python"
    kernelspec(user_data(Path(world.env["HOME"])), "analysis", str(python))
    with watching(world) as d:
        eventually(lambda: "not tracked" in d.output(), what="the missing venv reported")
        venv = make_venv(prefix)
        eventually(lambda: "tracking " + str(prefix) in d.output(), what="tracking")
        venv.install(wheels, "alpha==1.0")
        # With pip, should ensurepip still be at work when the venv is found.
        eventually(lambda: "alpha==1.0" in recorded(world, prefix), what="alpha")


@pytest.mark.slow
def test_what_ensurepip_puts_in_a_venv_found_while_it_is_made_is_not_the_users(
    world: World, wheels: Path
) -> None:
    """The kernelspec's venv is found as soon as `python3 -m venv` writes it, before
    ensurepip (its start held back 8 s by strace here) seeds pip: pip, appearing after
    the first scan, was recorded as the user's. It is the venv's making's until
    `bin/activate`, which venv writes after seeding, is there; the user's install is."""
    if subprocess.run(["strace", "-V"], capture_output=True, check=False).returncode != 0:
        pytest.skip("no strace")
    prefix = world.tmp / "envs" / "analysis"
    kernelspec(user_data(Path(world.env["HOME"])), "analysis", str(prefix / "bin" / "python"))
    with watching(world) as d:
        eventually(lambda: "not tracked" in d.output(), what="the missing venv reported")
        slow = ["strace", "-f", "-o", os.devnull, "-e", "inject=execve:delay_enter=8000000:when=2"]
        making = subprocess.Popen(
            [*slow, sys.executable, "-m", "venv", str(prefix)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            eventually(lambda: "tracking " + str(prefix) in d.output(), what="tracking")
            assert not (prefix / "bin" / "activate").exists(), "made before it was found"
        finally:
            _, err = making.communicate(timeout=120)
        assert making.returncode == 0, err
        Venv(prefix).install(wheels, "alpha==1.0")
        eventually(lambda: "alpha==1.0" in recorded(world, prefix), what="alpha")
        assert recorded(world, prefix) == ["alpha==1.0"]


@pytest.mark.slow
def test_a_listed_conda_environment_made_again_while_the_daemon_runs_is_tracked(
    world: World, wheels: Path
) -> None:
    """A prefix in environments.txt that is missing when the daemon starts is tracked once
    `conda create -p` makes it again: conda does not list it twice, so environments.txt is
    not written, and the prefix's own appearance brings discovery back."""
    home = Path(world.env["HOME"])
    prefix = world.tmp / "projects" / "env"
    (home / ".conda").mkdir()
    (home / ".conda" / "environments.txt").write_text(f"{prefix}\n")
    with watching(world) as d:
        eventually(lambda: "not tracked" in d.output(), what="the missing prefix reported")
        created = conda_prefix(make_venv(prefix))
        eventually(lambda: "tracking " + str(created.prefix) in d.output(), what="tracking")
        created.install(wheels, "beta==1.0")
        eventually(lambda: recorded(world, created.prefix) == ["beta==1.0"], what="beta")
