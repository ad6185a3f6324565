"""The indexes the rebase's consistency check reads are the ones the installer restore runs
reads (restore/indexconf.py): real pip.conf and uv.toml files in the places pip and uv
look, and each case held to what real pip and real uv, started the way restore starts
them (`PythonInstaller`, through the runner), actually ask the local index for."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from restore_kit import isolated  # noqa: F401  (autouse: this machine's settings kept out)
from test_rebase_index import Index, serve
from wheelhouse import Venv, make_venv

from pkgckpt.config import Config
from pkgckpt.manifest import Environment, Package
from pkgckpt.restore import indexconf
from pkgckpt.restore.indexmeta import readable
from pkgckpt.restore.python import PythonInstaller
from pkgckpt.restore.runner import Deadline


@dataclass
class Case:
    """Configuration files (path template -> text) and variables; `{a}`..`{e}` in them are
    distinct index URLs. `default` and `extra` are the letters the installer must read."""

    files: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    index_url: str | None = None
    default: str | None = None
    extra: tuple[str, ...] = ()


PIP_CASES = {
    "global-xdg-dirs-then-etc": Case(
        files={"{xdg}/pip/pip.conf": "[global]\nindex-url = {a}\n"}, default="a"
    ),
    "install-section-beats-a-later-files-global": Case(
        files={
            "{xdg}/pip/pip.conf": "[install]\nindex_url = {a}\n",
            "{config}/pip/pip.conf": "[global]\nindex-url = {b}\n",
        },
        default="a",
    ),
    "user-xdg-beats-legacy": Case(
        files={
            "{home}/.pip/pip.conf": "[global]\nindex-url = {a}\n",
            "{config}/pip/pip.conf": "[global]\nindex-url = {b}\n",
        },
        default="b",
    ),
    "site-prefix-beats-user": Case(
        files={
            "{config}/pip/pip.conf": "[global]\nindex-url = {a}\n",
            "{prefix}/pip.conf": "[global]\nindex-url = {b}\n",
        },
        default="b",
    ),
    "pip-config-file-skips-the-user-files": Case(
        files={
            "{config}/pip/pip.conf": "[install]\nindex-url = {a}\n",
            "{tmp}/named.conf": "[global]\nindex-url = {b}\n",
        },
        env={"PIP_CONFIG_FILE": "{tmp}/named.conf"},
        default="b",
    ),
    "variable-beats-files-and-extras-from-a-file": Case(
        files={"{prefix}/pip.conf": "[global]\nindex-url = {a}\nextra-index-url = {c} {d}\n"},
        env={"PIP_INDEX_URL": "{b}"},
        default="b",
        extra=("c", "d"),
    ),
    "pkgckpt-index-url-beats-the-variable": Case(
        env={"PIP_INDEX_URL": "{a}", "PIP_EXTRA_INDEX_URL": "{c}"},
        index_url="{b}",
        default="b",
        extra=("c",),
    ),
    "a-relative-pip-config-file-names-nothing": Case(
        files={
            "{cwd}/pip.conf": "[global]\nindex-url = {a}\n",
            "{config}/pip/pip.conf": "[global]\nindex-url = {b}\n",
        },
        env={"PIP_CONFIG_FILE": "pip.conf"},
        default="b",
    ),
}

UV_CASES = {
    "uv-config-file-default-index": Case(
        files={
            "{tmp}/uv.toml": '[[index]]\nurl = "{c}"\n\n[[index]]\nurl = "{a}"\ndefault = true\n'
        },
        env={"UV_CONFIG_FILE": "{tmp}/uv.toml"},
        default="a",
        extra=("c",),
    ),
    "uv-pip-section-beats-top-level": Case(
        files={"{tmp}/uv.toml": 'index-url = "{a}"\n\n[pip]\nindex-url = "{b}"\n'},
        env={"UV_CONFIG_FILE": "{tmp}/uv.toml"},
        default="b",
    ),
    "uv-variable-beats-the-file-and-user-uv-toml-is-not-read": Case(
        files={
            "{tmp}/uv.toml": 'index-url = "{a}"\n',
            "{config}/uv/uv.toml": 'index-url = "{d}"\nextra-index-url = ["{e}"]\n',
            "{xdg}/uv/uv.toml": 'index-url = "{e}"\n',
        },
        env={"UV_CONFIG_FILE": "{tmp}/uv.toml", "UV_DEFAULT_INDEX": "{b}", "UV_INDEX": "x={c}"},
        default="b",
        extra=("c",),
    ),
    "pkgckpt-index-url-beats-uv-default-index": Case(
        env={"UV_DEFAULT_INDEX": "{a}", "UV_EXTRA_INDEX_URL": "{c}"},
        index_url="{b}",
        default="b",
        extra=("c",),
    ),
}


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    """A live index on 127.0.0.1 that records what is asked of it."""
    with serve(tmp_path / "index") as served:
        yield served


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A venv without pip: restore runs pkgckpt's own pip `--python` it, or uv."""
    return make_venv(tmp_path_factory.mktemp("cfg") / "venv", with_pip=False)


def arrange(
    case: Case,
    tmp: Path,
    prefix: Path,
    served: str,
    monkeypatch: pytest.MonkeyPatch,
    installer: str = "auto",
) -> Config:
    """`case`'s files written and variables set; pkgckpt runs from `tmp/cwd`."""
    places = {
        "tmp": str(tmp),
        "xdg": str(tmp / "xdg"),
        "home": str(tmp / "home"),
        "config": str(tmp / "home" / "config"),
        "prefix": str(prefix),
        "cwd": str(tmp / "cwd"),
        **{letter: f"{served}{letter}/" for letter in "abcde"},
    }
    (prefix / "pip.conf").unlink(missing_ok=True)  # the venv is the module's
    (tmp / "cwd").mkdir()
    monkeypatch.chdir(tmp / "cwd")
    monkeypatch.delenv("PIP_CONFIG_FILE")
    monkeypatch.delenv("UV_NO_CONFIG")
    monkeypatch.setenv("HOME", places["home"])
    monkeypatch.setenv("XDG_CONFIG_HOME", places["config"])
    monkeypatch.setenv("XDG_CONFIG_DIRS", places["xdg"])
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for template, text in case.files.items():
        path = Path(template.format(**places))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.format(**places))
    for name, value in case.env.items():
        monkeypatch.setenv(name, value.format(**places))
    url = case.index_url.format(**places) if case.index_url else None
    return Config(store=tmp / "s", key="k", index_url=url, installer=installer)


def asked(index: Index) -> set[str]:
    """The index letters whose page of the probe project was requested."""
    return {path.split("/")[1] for path, _ in index.seen if path.endswith("/probe/")}


def _check(
    case: Case, tool: str, tmp: Path, venv: Venv, index: Index, mp: pytest.MonkeyPatch
) -> None:
    served = index.url.removesuffix("simple/")
    config = arrange(case, tmp, venv.prefix, served, mp, installer=tool)
    env = Environment(kind="python", path=str(venv.prefix), interpreter="3.11.0")
    found = indexconf.indexes(config, env)
    assert found.tool == tool
    urls, why = readable(found)
    assert why is None, why
    letters = [u.removeprefix(served).strip("/") for u in urls]
    assert letters == [case.default, *case.extra]

    probe = Package(name="probe", version="1.0")
    out = PythonInstaller(env, config).install([probe], reinstall=(), deadline=Deadline(120))
    assert not out.ok
    assert asked(index) == set(letters), out.output


@pytest.mark.parametrize("case", PIP_CASES.values(), ids=PIP_CASES.keys())
def test_the_check_reads_the_indexes_real_pip_reads(
    case: Case,
    tmp_path: Path,
    bare: Venv,
    index: Index,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pip's files (global, user, site, PIP_CONFIG_FILE), sections ([global] < [install] <
    PIP_*) and pkgckpt's --index-url give the indexes that real pip asks, and only those;
    a relative PIP_CONFIG_FILE names nothing (pip runs in an empty private directory)."""
    _check(case, "pip", tmp_path, bare, index, monkeypatch)


@pytest.mark.parametrize("case", UV_CASES.values(), ids=UV_CASES.keys())
def test_the_check_reads_the_indexes_real_uv_reads(
    case: Case,
    tmp_path: Path,
    bare: Venv,
    index: Index,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uv as restore runs it (`--no-config`): UV_CONFIG_FILE ([pip] over the top level,
    [[index]] default = true), UV_* variables over the file, pkgckpt's --index-url over
    UV_DEFAULT_INDEX; the user's and the system's uv.toml are read by neither."""
    _check(case, "uv", tmp_path, bare, index, monkeypatch)


def test_pip_config_file_devnull_reads_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PIP_CONFIG_FILE=os.devnull: no file at all, the global one included; variables
    still count. No index named: the built-in default is not asked, and the reason says so."""
    case = Case(files={"{xdg}/pip/pip.conf": "[global]\nindex-url = {a}\n"})
    config = arrange(case, tmp_path, tmp_path / "prefix", "https://x.example/", monkeypatch)
    env = Environment(kind="python", path=str(tmp_path / "prefix"), user=True)
    assert indexconf.indexes(config, env).default == "https://x.example/a/"
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    found = indexconf.indexes(config, env)
    assert (found.tool, found.default) == ("pip", None)
    assert readable(found) == ((), found_reason("pip"))
    monkeypatch.setenv("PIP_INDEX_URL", "https://y.example/simple/")
    assert indexconf.indexes(config, env).default == "https://y.example/simple/"


def found_reason(tool: str) -> str:
    return (
        f"no index named to {tool} (pkgckpt's index_url, {tool}'s configuration or "
        "environment): its built-in default is not asked"
    )


@pytest.mark.parametrize(
    ("text", "env", "why"),
    [
        ("[global]\nindex-url = {a}\nextra-index-url = file:///srv/simple\n", {}, "not http(s)"),
        ("[install]\nno-index = yes\nindex-url = {a}\n", {}, "no wheel of it in the find-links"),
        ("[global]\nindex-url = {a}\n", {"PIP_NO_INDEX": "maybe"}, "not a boolean"),
        ("[global\nindex-url = {a}\n", {}, "cannot be read"),
    ],
    ids=["a-file-index-beside", "no-index", "bad-boolean", "broken-file"],
)
def test_what_cannot_be_read_asks_no_index(
    text: str, env: dict[str, str], why: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An extra index that is not http(s) (the installer may take the file from it), pip's
    no-index, and a value or a file pip would refuse: no index is read, and why is given."""
    case = Case(files={"{prefix}/pip.conf": text}, env=env)
    config = arrange(case, tmp_path, tmp_path / "prefix", "https://x.example/", monkeypatch)
    env_ = Environment(kind="python", path=str(tmp_path / "prefix"), user=True)
    urls, reason = readable(indexconf.indexes(config, env_))
    assert urls == ()
    assert reason is not None and why in reason, reason


@pytest.mark.slow
@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_restore_checks_against_the_index_the_image_configures(
    tmp_path: Path, index: Index, installer: str
) -> None:
    """Real venvs, no --index-url: image v2 names its index only in its installer's
    configuration (pip: the prefix's pip.conf [install]; uv: UV_CONFIG_FILE's [[index]]
    default = true, with UV_NO_CONFIG set). olduser, whose metadata there needs evaldep<2,
    is held back before any install (exit 3), newpkg comes from that index, pip check is
    clean."""
    from daemon_kit import World
    from test_rebase import Scenario
    from test_rebase_index import OLDUSER_HELD
    from wheelhouse import Dist, build_wheel

    built = tmp_path / "wheels"
    for dist in (
        Dist("olduser", "1.0", requires=["evaldep<2"]),
        Dist("newpkg", "1.0"),
        Dist("evaldep", "1.0"),
        Dist("evaldep", "2.0"),
    ):
        index.publish(build_wheel(dist, built))
    (tmp_path / "w").mkdir()
    s = Scenario(World.make(tmp_path / "w"), built, tmp_path / "venv")
    b1 = s.image(sys.executable, ["evaldep==1.0"], "b1.json")
    s.user_changes(b1, ["olduser==1.0", "newpkg==1.0"], [])
    b2 = s.image(sys.executable, ["evaldep==2.0"], "b2.json")
    env = s.world.env
    if installer == "pip":
        del env["PIP_CONFIG_FILE"]
        env.update(XDG_CONFIG_DIRS=str(tmp_path / "xdg"), HOME=str(tmp_path / "home"))
        (s.prefix / "pip.conf").write_text(f"[install]\nindex-url = {index.url}\n")
    else:
        (tmp_path / "uv.toml").write_text(f'[[index]]\nurl = "{index.url}"\ndefault = true\n')
        env["UV_CONFIG_FILE"] = str(tmp_path / "uv.toml")

    done = s.world.pkgckpt("restore", *s.flags(b2), "--installer", installer, timeout=600)
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"olduser 1.0 held back: {OLDUSER_HELD}" in done.stdout, done.stdout
    assert ("/files/olduser-1.0-py3-none-any.whl.metadata", None) in index.seen
    assert not index.wheel_fetched("olduser-1.0-py3-none-any.whl")
    assert index.wheel_fetched("newpkg-1.0-py3-none-any.whl"), "installed from that index"
    have = s.installed()
    assert (have["newpkg"], have["evaldep"], "olduser" in have) == ("1.0", "2.0", False)
    check = s.check()
    assert check.returncode == 0, check.stdout + check.stderr


def test_extra_indexes_are_read_and_must_agree(
    tmp_path: Path, index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an extra index (uv's UV_INDEX) the installer may take olduser 1.0 from either:
    both are read; the same requirements on both hold it back, different ones (dependency
    confusion) leave it to the installer, naming both indexes."""
    from test_rebase_index import OLDUSER_HELD, decisions, plan_on_v2
    from wheelhouse import Dist, build_wheel

    wanted = build_wheel(Dist("olduser", "1.0", requires=["evaldep<2"]), tmp_path / "a")
    other = build_wheel(Dist("olduser", "1.0", requires=["evaldep>=2"]), tmp_path / "b")
    with serve(tmp_path / "extra") as extra:
        arrange(Case(env={"UV_INDEX": f"extra={extra.url}"}), tmp_path, tmp_path, "", monkeypatch)
        index.publish(wanted)
        extra.publish(wanted)
        planned = plan_on_v2(tmp_path, index.url, "olduser==1.0")
        assert decisions(planned)["olduser"] == ("held-back", OLDUSER_HELD)
        assert ("/files/olduser-1.0-py3-none-any.whl.metadata", None) in extra.seen

        extra.publish(other)
        action, reason = decisions(plan_on_v2(tmp_path, index.url, "olduser==1.0"))["olduser"]
        assert action == "install"
        assert reason.endswith(
            f"the indexes offer it with different requirements ({index.url}, {extra.url})"
        ), reason


def test_the_indexes_share_one_deadline(
    tmp_path: Path, index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three indexes, each sending its page a byte at a time: all three are read by one
    deadline, not one budget each (which made three slow indexes cost three times it);
    each is named as unreachable."""
    import time

    from test_rebase_index import decisions, plan_on_v2

    with serve(tmp_path / "b") as b, serve(tmp_path / "c") as c:
        arrange(Case(env={"UV_INDEX": f"b={b.url} c={c.url}"}), tmp_path, tmp_path, "", monkeypatch)
        for served in (index, b, c):
            (project := served.root / "simple" / "olduser").mkdir(parents=True)
            (project / "drip").touch()
        started = time.monotonic()
        planned = plan_on_v2(tmp_path, index.url, "olduser==1.0", index_until=started + 0.6)
        assert time.monotonic() - started < 1.5
    (action, reason) = decisions(planned)["olduser"]
    assert action == "install"
    for served in (index, b, c):
        assert f"the index {served.url} is unreachable (out of time)" in reason, reason
