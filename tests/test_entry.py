"""`pkgckpt restore` without click: the same options, read the same way, or left to click."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from restore_kit import hermetic, installed, put_manifest
from wheelhouse import make_venv

from pkgckpt import cli, config, entry
from pkgckpt.config import Config
from pkgckpt.inventory import targets
from pkgckpt.manifest import Body, Delta, Package


def click_params(args: list[str]) -> dict[str, Any] | None:
    """restore's parameters as click parses `args`, or None where click refuses them."""
    try:
        with cli.restore.make_context("restore", list(args)) as ctx:
            return dict(ctx.params)
    except click.ClickException:
        return None


def test_the_table_is_clicks_declaration() -> None:
    """Every option of click's `restore`, and only those, is in entry.RESTORE, alike."""
    declared = {p.name: p for p in cli.restore.params if isinstance(p, click.Option)}
    assert {o.name for o in entry.RESTORE} == set(declared) - {"help"}
    for option in entry.RESTORE:
        param = declared[option.name]
        assert tuple(param.opts) == option.opts and not param.secondary_opts, option.name
        assert param.is_flag == (option.kind == "flag"), option.name
        assert param.multiple == (option.kind == "multiple"), option.name
        if option.kind != "flag":
            assert param.nargs == 1, option.name
        assert param.envvar is None, option.name
    assert not [p for p in cli.restore.params if isinstance(p, click.Argument)]


def test_seconds_are_bounded_as_the_settings_are() -> None:
    """entry's bound on --timeout is the settings' own (config.MAX_SECONDS), and click's."""
    assert entry.MAX_SECONDS == config.MAX_SECONDS
    assert entry.parse_restore(["--timeout", "86400"]) == click_params(["--timeout", "86400"])
    for value in ("86400.5", "inf", "nan"):
        assert click_params(["--timeout", value]) is None, value
        assert click_params(["--jitter", value]) is None, value


def test_no_options_is_clicks_defaults() -> None:
    """A bare `restore`: every parameter has click's default (None, False or ())."""
    assert entry.parse_restore([]) == click_params([])


JUNK = ["--help", "--bogus", "--", "-x", "positional", "--dry-run=1", "--no-index=yes"]
VALUES = ["", "abc", "/", "./rel", "k=v", "https://i/simple", "0", "2"]
ODD = ["-", "-1", "--store", "nan", "inf", "1e3", " 2 ", "1_0"]
POOLS = {
    "--timeout": ["0", "1.5", "1e3", "-0", "300", "nan", "inf", "86400", "86400.5", "1e9"],
    "--jitter": ["0", "600", "600.0", "600.5", "601", "1e3", "nan", "-inf"],
    "--installer": ["auto", "pip", "uv", "UV", "conda"],
    "--on-conflict": ["image", "user", "Image", "both"],
}


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    """Mostly lines click takes, with values near each option's limits; now and then
    something odd (junk, a flag given a value, a value like an option or a number)."""
    args: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        odd = draw(st.integers(0, 9)) == 0
        option = draw(st.sampled_from(entry.RESTORE))
        name = draw(st.sampled_from(JUNK)) if odd else option.opts[0]
        pool = POOLS.get(name) or VALUES
        value = draw(st.sampled_from(pool + ODD if odd else pool))
        if option.kind == "flag" and not odd:
            args.append(name)
        elif draw(st.booleans()):
            args += [name, value]
        else:
            args.append(f"{name}={value}")
    return args


@settings(max_examples=600, deadline=None)
@given(command_lines())
def test_parsed_as_click_parses_or_left_to_click(args: list[str]) -> None:
    """Whatever entry parses, click parses to the very same parameters."""
    ours = entry.parse_restore(args)
    if ours is not None:
        assert ours == click_params(args), args


@pytest.mark.parametrize(
    "args",
    [
        ["--store", "/s", "--key", "k", "--env", "/e", "--env", "/f", "--no-index"],
        ["--find-links=/w", "--find-links", "/v", "--timeout", "0", "--jitter=600"],
        ["--installer", "uv", "--on-conflict", "user", "--dry-run", "--json"],
        ["--timeout", "300", "--print-bound"],
        ["--key", "a", "--key", "b", "--index-url=https://i/simple", "--keep-removed"],
        ["--r-lib", "/r", "--r-discover", "--r-repo", "file:///repo", "--baseline", "/b"],
    ],
)
def test_the_usual_command_lines_are_read_here(args: list[str]) -> None:
    """The entrypoint's usual restore lines never need click, and read as click reads them."""
    ours = entry.parse_restore(args)
    assert ours is not None and ours == click_params(args)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--timeout", "-1"],
        ["--jitter", "601"],
        ["--timeout", "nan"],
        ["--timeout", "inf"],
        ["--timeout", "1e9"],
        ["--jitter", "nan"],
        ["--installer", "conda"],
        ["--key", "--store"],
        ["--key"],
        ["--dry-run=yes"],
        ["--", "x"],
        ["extra"],
    ],
)
def test_what_click_must_answer_goes_to_click(args: list[str]) -> None:
    """Help, refused values and anything unusual are left to click."""
    assert entry.parse_restore(args) is None


def run_module(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pkgckpt", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
    )


def imported(stderr: str) -> set[str]:
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def msgspec_own() -> set[str]:
    """What importing msgspec loads by itself on this interpreter, in a process set up as
    pkgckpt's own (`own_process`): on Python 3.10, inspect and subprocess (its typing
    helpers, and uuid through platform), which no start-up of pkgckpt can then avoid."""
    code = "import pkgckpt; pkgckpt.own_process(); import msgspec"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    )
    return imported(done.stderr)


def test_a_restore_imports_no_click(tmp_path: Path) -> None:
    """A real `pkgckpt restore` (here: of a store not mounted, exit 1) never loads click,
    and says why it failed as the click front end does."""
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    env.pop("PKGCKPT_STORE", None)
    missing = tmp_path / "nfs"
    done = run_module("restore", "--store", str(missing), "--key", "k", cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert "click" not in imported(done.stderr)
    assert f"pkgckpt: store {missing} is not available" in done.stderr
    assert cli.run(["restore", "--store", str(missing), "--key", "k"]) == 1


def test_help_and_usage_errors_are_clicks(tmp_path: Path) -> None:
    """`restore --help` and a bad flag get click's help and click's usage error (exit 2)."""
    helped = run_module("restore", "--help", cwd=tmp_path, env=dict(os.environ))
    assert helped.returncode == 0 and "Exit codes:" in helped.stdout
    assert "click" in imported(helped.stderr)
    bad = run_module("restore", "--timeout", "-1", cwd=tmp_path, env=dict(os.environ))
    assert bad.returncode == 2 and "Invalid value for '--timeout'" in bad.stderr


def test_a_no_op_restore_loads_only_what_it_runs(tmp_path: Path) -> None:
    """A no-op restore, the interpreter's answer kept by the one before, loads neither
    logging (its lines are written directly), subprocess, shutil, tempfile, getpass, nor
    packaging for plain release versions: ~15 ms of a ~90 ms start-up. Its warning still
    reads as `logs.setup` prints one."""
    venv = make_venv(tmp_path / "venv")
    site = next((venv.prefix / "lib").glob("python3*/site-packages"))
    pip = Package(name="pip", version=installed(site)["pip"])
    env = targets(Config(env=(venv.prefix,)))[0].env
    put_manifest(tmp_path / "store", "k", Body(environments=(Delta(env=env, added=(pip,)),)))
    run = tmp_path / "run"
    environ = {**hermetic(tmp_path), "XDG_RUNTIME_DIR": str(run)}
    environ["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    args = ["restore", "--store", str(tmp_path / "store"), "--key", "k", "--env"]
    args.append(str(venv.prefix))
    first = run_module(*args, cwd=tmp_path, env=environ)
    assert first.returncode == 0, first.stderr
    again = run_module(*args, cwd=tmp_path, env=environ)
    assert again.returncode == 0 and "in place" in again.stdout, again.stderr
    assert "pkgckpt.restore" in imported(again.stderr)
    rare = {"logging", "subprocess", "shutil", "tempfile", "getpass", "packaging.version"}
    # inspect: what typing_extensions, installed here, imports (tried and refused, it is
    # still named by -X importtime).
    rare |= {"dataclasses", "inspect"}
    assert not (rare - msgspec_own()) & imported(again.stderr)
    # No longer private: passed over for the fallback, which a third run then finds kept.
    (run / "pkgckpt").chmod(0o755)
    assert run_module(*args, cwd=tmp_path, env=environ).returncode == 0
    warned = run_module(*args, cwd=tmp_path, env=environ)
    assert warned.returncode == 0 and "logging" not in imported(warned.stderr)
    said = [line for line in warned.stderr.splitlines() if not line.startswith("import time:")]
    fallback = tmp_path / "cache" / "pkgckpt" / "run-"
    assert len(said) == 1 and said[0].startswith(
        f"pkgckpt: warning: runtime directory {run / 'pkgckpt'} is not ours "
        f"(open to group or others (mode 0755)): using {fallback}"
    ), said


def test_the_restore_path_loads_neither_dataclasses_nor_inspect() -> None:
    """`import pkgckpt.restore, pkgckpt.entry` loads neither dataclasses nor inspect beyond
    what msgspec loads in pkgckpt's own process (`own_process`: typing_extensions, which
    imports inspect, is installed here): the two cost each start ~15-20 ms and 1.2 MB."""
    code = (
        "import sys, pkgckpt; pkgckpt.own_process(); "
        "import msgspec; own = set(sys.modules); "
        "import pkgckpt.restore, pkgckpt.entry; "
        "print(' '.join(m for m in ('dataclasses', 'inspect', 'ast') "
        "if m in sys.modules and m not in own))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == []


def test_a_program_importing_pkgckpt_keeps_typing_extensions() -> None:
    """Only pkgckpt's own processes go without typing_extensions: a program that imports
    pkgckpt's modules (a test, a notebook) can still import it."""
    code = "import pkgckpt.restore, pkgckpt.daemon, typing_extensions; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout == "ok\n", done.stderr
