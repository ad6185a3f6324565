"""The command line contract: exit codes, one-line errors, --help, flag precedence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from restore_kit import hermetic, put_manifest
from wheelhouse import Dist, build_wheel, make_venv

from pkgckpt import cli, status
from pkgckpt.manifest import Body, Delta, Environment, Package

COMMANDS = ["daemon", "snapshot", "restore", "status", "baseline"]


def run(*argv: str) -> int:
    return cli.run(list(argv))


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Hermetic settings (no PKGCKPT_*, private runtime and config dirs) for this process."""
    variables = hermetic(tmp_path)
    for name in list(os.environ):
        if name.startswith("PKGCKPT_"):
            monkeypatch.delenv(name)
    for name in ("XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "UV_CACHE_DIR", "PIP_CONFIG_FILE"):
        monkeypatch.setenv(name, variables[name])
    return variables


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_documents_the_exit_codes(
    command: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pkgckpt --help` and every command's --help list exit codes 0, 1, 2 and 3."""
    assert run(*([command] if command else []), "--help") == 0
    out = capsys.readouterr().out
    assert "Exit codes:" in out
    for code in ("0  done", "1  error", "2  usage", "3  partial restore"):
        assert code in out


def test_every_command_takes_the_shared_selectors(capsys: pytest.CaptureFixture[str]) -> None:
    """--env, --r-lib, --store, --key, --baseline and --config are on every command."""
    for command in COMMANDS:
        run(command, "--help")
        out = capsys.readouterr().out
        for flag in (
            "--env PREFIX",
            "--r-lib DIR",
            "--store DIR",
            "--key KEY",
            "--baseline FILE",
            "--config FILE",
        ):
            assert flag in out, (command, flag)


def test_version_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    """`pkgckpt --version` prints the version and exits 0."""
    assert run("--version") == 0
    assert "pkgckpt, version" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--no-such-flag"],
        ["restore", "--installer", "conda"],
        ["frobnicate"],
        ["baseline"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown flags, bad choices, unknown commands, missing required options: exit 2."""
    assert run(*argv) == 2
    assert "Error:" in capsys.readouterr().err


def test_a_bad_setting_in_the_environment_exits_2_in_one_line(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PKGCKPT_QUIET_MS=soon is a usage error naming the variable."""
    monkeypatch.setenv("PKGCKPT_QUIET_MS", "soon")
    assert run("status") == 2
    err = capsys.readouterr().err
    assert err.splitlines() == ["pkgckpt: PKGCKPT_QUIET_MS: invalid value 'soon' for quiet_ms"]


def test_a_library_error_exits_1_with_one_line(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A configured baseline file that cannot be read: exit 1, one line, no traceback."""
    unreadable = tmp_path / "baseline.json"
    unreadable.mkdir()
    args = ("--store", str(tmp_path / "s"), "--key", "k", "--baseline", str(unreadable))
    assert run("status", *args) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"pkgckpt: baseline {unreadable} is not a regular file"]


def test_an_unexpected_exception_is_one_line_not_a_traceback(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug still ends in exit 1 and one line naming the exception."""

    def boom(config: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(status, "collect", boom)
    assert run("status") == 1
    assert capsys.readouterr().err.splitlines() == [
        "pkgckpt: internal error: RuntimeError: bug (PKGCKPT_DEBUG=1 shows where)"
    ]


def test_store_precedence_is_flag_then_environment_then_file(
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The store `status` reports comes from --store, else PKGCKPT_STORE, else the file."""
    conf = tmp_path / "c.toml"
    conf.write_text(f'store = "{tmp_path / "from-file"}"\nkey = "k"\n')

    def store(*argv: str) -> str:
        assert run("status", "--json", "--config", str(conf), *argv) == 0
        return str(json.loads(capsys.readouterr().out)["store"])

    assert store() == str(tmp_path / "from-file" / "k")
    monkeypatch.setenv("PKGCKPT_STORE", str(tmp_path / "from-env"))
    assert store() == str(tmp_path / "from-env" / "k")
    assert store("--store", str(tmp_path / "from-flag")) == str(tmp_path / "from-flag" / "k")


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        # status reports a missing --env and goes on; baseline cannot.
        (["baseline", "--env", "{tmp}/missing", "--output", "{tmp}/b.json"], 1),
        (["status", "--key", ".hidden", "--store", "{tmp}/s"], 2),
    ],
)
def test_process_errors_print_no_traceback(tmp_path: Path, argv: list[str], code: int) -> None:
    """The real process (`python -m pkgckpt`) exits 1 or 2 with a one-line message."""
    bad = subprocess.run(
        [sys.executable, "-m", "pkgckpt", *(a.format(tmp=tmp_path) for a in argv)],
        capture_output=True,
        text=True,
        env=hermetic(tmp_path),
    )
    assert bad.returncode == code, bad.stderr
    assert len(bad.stderr.splitlines()) == 1 and bad.stderr.startswith("pkgckpt: ")


@pytest.mark.slow
def test_partial_restore_exits_3_and_installs_the_rest(tmp_path: Path) -> None:
    """A package that cannot be installed: exit 3, the others installed, the failure named."""
    variables = hermetic(tmp_path)
    wheels = tmp_path / "wheels"
    build_wheel(Dist("good-one", "1.0"), wheels)
    venv = make_venv(tmp_path / "venv", with_pip=False)
    store = tmp_path / "store"
    flags = ["--env", str(venv.prefix), "--store", str(store), "--key", "k"]
    base = subprocess.run(
        [sys.executable, "-m", "pkgckpt", "baseline", *flags, "--output", str(tmp_path / "b.json")],
        capture_output=True,
        text=True,
        env=variables,
    )
    assert base.returncode == 0, base.stderr
    environment = Environment(kind="python", path=str(venv.prefix))
    added = (Package(name="good-one", version="1.0"), Package(name="not-there", version="2.0"))
    put_manifest(store, "k", Body(environments=(Delta(env=environment, added=added),)))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pkgckpt",
            "restore",
            *flags,
            "--baseline",
            str(tmp_path / "b.json"),
            "--installer",
            "uv",
            "--no-index",
            "--find-links",
            str(wheels),
        ],
        capture_output=True,
        text=True,
        env=variables,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "not-there" in proc.stderr.splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert list(venv.site_packages.glob("good_one-1.0.dist-info"))


def test_the_help_starts_the_daemon_whatever_restore_returned(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The entrypoint example starts the daemon after a partial restore (exit 3) too, as
    examples/entrypoint.sh does: `;`, not `&&`."""
    assert run("--help") == 0
    text = capsys.readouterr().out
    assert "pkgckpt restore --timeout 300; pkgckpt daemon &" in text
    assert "&& pkgckpt daemon" not in text


def pkgckpt_process(
    tmp_path: Path, *argv: str, **variables: str
) -> subprocess.CompletedProcess[str]:
    """The real process (`python -m pkgckpt`, through `entry` as the console script)."""
    return subprocess.run(
        [sys.executable, "-m", "pkgckpt", *argv],
        capture_output=True,
        text=True,
        env={**hermetic(tmp_path), **variables},
        timeout=60,
    )


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["restore", "--timeout", "inf"], "--timeout"),
        (["restore", "--timeout", "1e9"], "--timeout"),
        (["restore", "--timeout=nan"], "--timeout"),
        (["restore", "--timeout", "86400.5"], "--timeout"),
        (["restore", "--jitter", "nan"], "--jitter"),
        (["daemon", "--shutdown-timeout", "inf"], "--shutdown-timeout"),
        (["daemon", "--shutdown-timeout", "nan"], "--shutdown-timeout"),
    ],
)
def test_seconds_that_are_not_finite_or_beyond_a_day_are_usage_errors(
    tmp_path: Path, argv: list[str], flag: str
) -> None:
    """`--timeout inf` (or 1e9) was an internal error (OverflowError, exit 1), and NaN
    was taken: every package then timed out at once. Now click refuses them (exit 2)."""
    done = pkgckpt_process(tmp_path, *argv, "--store", str(tmp_path / "s"), "--key", "k")
    assert done.returncode == 2, done.stderr
    assert f"Invalid value for '{flag}'" in done.stderr
    assert "internal error" not in done.stderr


@pytest.mark.parametrize(
    ("argv", "variables", "said"),
    [
        (["--quiet-ms", "86400001"], {}, "Invalid value for '--quiet-ms'"),
        (["--max-delay-ms", str(10**12)], {}, "Invalid value for '--max-delay-ms'"),
        ([], {"PKGCKPT_QUIET_MS": str(10**400)}, "for quiet_ms: milliseconds, from 0 to"),
        ([], {"PKGCKPT_ARTIFACT_RETRIES": "5000"}, "for artifact_retries: retries, from 0"),
        ([], {"PKGCKPT_KEEP_GENERATIONS": "0"}, "for keep_generations: generations, from 1"),
    ],
)
def test_an_integer_beyond_its_bounds_stops_the_daemon_with_exit_2(
    tmp_path: Path, argv: list[str], variables: dict[str, str], said: str
) -> None:
    """`PKGCKPT_QUIET_MS=10**400` was an internal error (exit 1) and 10**12 a daemon that
    recorded nothing until it stopped: the real daemon refuses them before it starts."""
    done = pkgckpt_process(
        tmp_path, "daemon", *argv, "--store", str(tmp_path / "s"), "--key", "k", **variables
    )
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "internal error" not in done.stderr


def test_an_integer_setting_of_inf_in_a_file_is_a_usage_error(tmp_path: Path) -> None:
    """`quiet_ms = inf` in a config file was an internal error (OverflowError)."""
    (tmp_path / "c.toml").write_text("quiet_ms = inf\n")
    done = pkgckpt_process(tmp_path, "status", "--config", str(tmp_path / "c.toml"))
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"pkgckpt: {tmp_path / 'c.toml'}: invalid value inf for quiet_ms\n"


@pytest.mark.parametrize("value", ["nan", "inf", "1e9"])
def test_a_timeout_variable_that_is_no_bound_fails_before_the_store_is_touched(
    tmp_path: Path, value: str
) -> None:
    """PKGCKPT_TIMEOUT=nan: exit 2 naming the variable, and the manifest as it was (a NaN
    timeout used to fail every package and write that failure to it)."""
    venv = make_venv(tmp_path / "venv", with_pip=False)
    environment = Environment(kind="python", path=str(venv.prefix))
    added = (Package(name="good-one", version="1.0"),)
    store = tmp_path / "store"
    path = put_manifest(store, "k", Body(environments=(Delta(env=environment, added=added),)))
    before = path.read_bytes()
    listing = sorted(path.parent.iterdir())
    done = pkgckpt_process(
        tmp_path, "restore", "--env", str(venv.prefix), "--store", str(store), "--key", "k",
        PKGCKPT_TIMEOUT=value,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"pkgckpt: PKGCKPT_TIMEOUT: invalid value {value!r} for timeout: seconds, "
        "from 0 to 86400 (a day)"
    ]
    assert path.read_bytes() == before
    assert sorted(path.parent.iterdir()) == listing


@pytest.mark.parametrize(
    "argv",
    [
        ["store", "init", ""],
        ["store", "prune-pool", "", "--older-than", "1"],
        ["status", "--store", ""],
        ["status", "--store="],
        ["restore", "--store", ""],
        ["restore", "--dry-run", "--baseline", ""],
        ["restore", "--dry-run", "--env", ""],
        ["status", "--config", ""],
        ["daemon", "--metrics-file", ""],
        ["baseline", "--output", ""],
    ],
)
def test_an_empty_path_argument_is_refused_not_the_working_directory(
    tmp_path: Path, argv: list[str]
) -> None:
    """`store init ""` wrote the store's marker into the working directory; an empty
    --store made it the store. Every path a command line names must name something."""
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "pkgckpt", *argv],
        capture_output=True, text=True, env=hermetic(tmp_path), cwd=work, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "an empty path names nothing" in done.stderr
    assert list(work.iterdir()) == []


def test_an_empty_store_variable_is_refused(tmp_path: Path) -> None:
    """PKGCKPT_STORE= (say a pod spec's unset template): exit 2, nothing in the working
    directory, where the store used to be."""
    work = tmp_path / "work"
    work.mkdir()
    for command in (["status"], ["restore"], ["daemon"]):
        done = subprocess.run(
            [sys.executable, "-m", "pkgckpt", *command],
            capture_output=True, text=True, cwd=work, timeout=60,
            env={**hermetic(tmp_path), "PKGCKPT_STORE": "", "PKGCKPT_KEY": "k"},
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines() == [
            "pkgckpt: PKGCKPT_STORE: store is empty, which would be the working directory: "
            "name a path, or leave the setting out for its default"
        ]
        assert list(work.iterdir()) == []
