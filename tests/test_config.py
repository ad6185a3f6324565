"""Settings: flags > PKGCKPT_* environment > config files > defaults; the runtime directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import msgspec
import pytest

from pkgckpt import config
from pkgckpt.errors import UsageError


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A system and a user config file in tmp (neither exists until a test writes it)."""
    system = tmp_path / "etc" / "config.toml"
    monkeypatch.setattr(config, "SYSTEM_CONFIG", system)
    # The tests pass `environ` without XDG_CONFIG_HOME: the user file is found under HOME.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    user = tmp_path / "home" / ".config" / "pkgckpt" / "config.toml"
    for path in (system, user):
        path.parent.mkdir(parents=True)
    return {"system": system, "user": user, "explicit": tmp_path / "explicit.toml"}


def test_defaults_apply_when_nothing_is_set(files: dict[str, Path]) -> None:
    """With no file, variable or flag, the documented defaults hold."""
    c = config.load({}, None, environ={})
    assert (c.quiet_ms, c.max_delay_ms, c.shutdown_timeout, c.rescan_interval) == (
        500,
        30_000,
        10.0,
        0.0,
    )
    assert c.installer == "auto" and c.baseline is None and c.env == ()


def test_each_layer_overrides_the_one_below_key_by_key(files: dict[str, Path]) -> None:
    """system file < user file < --config file < PKGCKPT_* < flags, per setting."""
    files["system"].write_text('store = "/sys"\nkey = "k-sys"\nquiet_ms = 1\ntimeout = 1.0\n')
    files["user"].write_text('key = "k-user"\nquiet_ms = 2\nmax_delay_ms = 2\n')
    files["explicit"].write_text('quiet_ms = 3\nmax-delay-ms = 3\ninstaller = "pip"\n')
    environ = {"PKGCKPT_MAX_DELAY_MS": "4", "PKGCKPT_INSTALLER": "uv"}
    c = config.load({"installer": "pip", "key": None}, files["explicit"], environ=environ)
    assert c.store == Path("/sys")
    assert c.key == "k-user"
    assert c.quiet_ms == 3
    assert c.timeout == 1.0
    assert c.max_delay_ms == 4
    assert c.installer == "pip"


def test_pkgckpt_config_names_the_explicit_file(files: dict[str, Path]) -> None:
    """PKGCKPT_CONFIG stands in for --config; the flag wins over it."""
    files["explicit"].write_text('key = "from-var"\n')
    other = files["explicit"].with_name("other.toml")
    other.write_text('key = "from-flag"\n')
    environ = {"PKGCKPT_CONFIG": str(files["explicit"])}
    assert config.load({}, None, environ=environ).key == "from-var"
    assert config.load({}, other, environ=environ).key == "from-flag"


def test_the_user_file_is_found_through_the_environ_given_not_the_process_one(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load(environ=...) takes XDG_CONFIG_HOME from `environ`, like every PKGCKPT_* setting."""
    for where, key in (("process", "from-process"), ("given", "from-given")):
        path = tmp_path / where / "pkgckpt" / "config.toml"
        path.parent.mkdir(parents=True)
        path.write_text(f'key = "{key}"\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "process"))
    given = {"XDG_CONFIG_HOME": str(tmp_path / "given")}
    assert config.load({}, None, environ=given).key == "from-given"
    files["user"].write_text('key = "from-home"\n')
    assert config.load({}, None, environ={}).key == "from-home"


def test_list_settings_split_on_pathsep_and_repeat_as_flags(files: dict[str, Path]) -> None:
    """PKGCKPT_ENV=a:b gives two prefixes; repeated --env flags replace them."""
    environ = {"PKGCKPT_ENV": f"/a{os.pathsep}/b", "PKGCKPT_FIND_LINKS": "/w"}
    c = config.load({}, None, environ=environ)
    assert c.env == (Path("/a"), Path("/b")) and c.find_links == ("/w",)
    c = config.load({"env": (Path("/c"),)}, None, environ=environ)
    assert c.env == (Path("/c"),)
    assert config.load({"env": ()}, None, environ=environ).env == (Path("/a"), Path("/b"))


def test_a_leading_tilde_is_the_home_directory_in_single_and_list_paths(
    files: dict[str, Path],
) -> None:
    """`~` means the same in `store` as in each entry of `env` or `r_lib`."""
    home = Path(os.environ["HOME"])
    files["user"].write_text('store = "~/st"\nenv = ["~/venv", "/opt/conda"]\nr_lib = ["~/R"]\n')
    c = config.load({}, None, environ={"PKGCKPT_ENV": f"~/a{os.pathsep}~/b"})
    assert c.store == home / "st" and c.r_lib == (home / "R",)
    assert c.env == (home / "a", home / "b")


def test_relative_find_links_are_made_absolute_where_they_are_read(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pip and uv run in a private, empty working directory: a relative find-links path
    is made absolute against its config file's directory, or, given as a flag or in the
    environment, against the working directory pkgckpt started in. URLs, absolute paths
    and `~` read as everywhere else."""
    home = Path(os.environ["HOME"])
    start = tmp_path / "start"
    start.mkdir()
    monkeypatch.chdir(start)
    links = '["wheels", "../more", "/abs", "~/w", "https://h/w/", "file:///srv/w", "http://h/x"]'
    files["system"].write_text(f"find_links = {links}\n")
    assert config.load({}, None, environ={}).find_links == (
        str(files["system"].parent / "wheels"),
        str(files["system"].parent / "../more"),
        "/abs",
        str(home / "w"),
        "https://h/w/",
        "file:///srv/w",
        "http://h/x",
    )
    files["explicit"].write_text('find_links = ["wheels"]\n')
    relative = Path(os.path.relpath(files["explicit"], start))
    (found,) = config.load({}, relative, environ={}).find_links
    assert Path(found).is_absolute() and Path(found).resolve() == tmp_path.resolve() / "wheels"
    environ = {"PKGCKPT_FIND_LINKS": f"wheels{os.pathsep}/abs"}
    assert config.load({}, None, environ=environ).find_links == (str(start / "wheels"), "/abs")
    flags = {"find_links": ("here", "https://h/w/")}
    assert config.load(flags, None, environ={}).find_links == (str(start / "here"), "https://h/w/")


@pytest.mark.parametrize(
    ("value", "entries"),
    [
        ("https://h/wheels", ["https://h/wheels"]),
        ("https://h:8443/w/:/opt/w:rel", ["https://h:8443/w/", "/opt/w", "rel"]),
        ("https://user:secret@h/w:file:///srv/w", ["https://user:secret@h/w", "file:///srv/w"]),
        ("http://[::1]:8080/w:HTTP://H/x", ["http://[::1]:8080/w", "HTTP://H/x"]),
        # A bare host's colon before an absolute path separates; one after the host part
        # (in the path or the query) always does.
        ("https://h:/opt/w", ["https://h", "/opt/w"]),
        ("https://h/a:b", ["https://h/a", "b"]),
        # A URL without a path, then another URL or a conda channel's name: two entries.
        (
            "https://cran.r-project.org:https://h/bioc",
            ["https://cran.r-project.org", "https://h/bioc"],
        ),
        ("https://h:file:///opt/cran", ["https://h", "file:///opt/cran"]),
        ("https://conda.h:bioconda", ["https://conda.h", "bioconda"]),
        ("http://[fe80::1]:https://h", ["http://[fe80::1]", "https://h"]),
    ],
)
def test_url_lists_keep_the_colons_of_their_urls_in_the_environment(
    files: dict[str, Path], tmp_path: Path, value: str, entries: list[str]
) -> None:
    """PKGCKPT_FIND_LINKS=https://h/wheels was cut at its colon into a relative path
    `https` and `//h/wheels`: URLs in the lists that take them stay whole, beside paths;
    relative paths are still made absolute. A path list is split at every colon."""
    environ = {
        name: value for name in ("PKGCKPT_FIND_LINKS", "PKGCKPT_R_REPO", "PKGCKPT_CONDA_CHANNELS")
    }
    loaded = config.load({}, None, environ={**environ, "PKGCKPT_ENV": "https://h/w"})
    absolute = [
        e if e.startswith(("/", "http", "HTTP", "file")) else str(Path.cwd() / e) for e in entries
    ]
    assert loaded.find_links == tuple(absolute)
    assert loaded.r_repo == loaded.conda_channels == tuple(entries)
    assert loaded.env == (Path.cwd() / "https", Path("//h/w"))
    files["explicit"].write_text(f"find_links = {value!r}\n")
    assert config.load({}, files["explicit"], environ={}).find_links[0] == entries[0]


@pytest.mark.parametrize(
    ("environ", "text", "message"),
    [
        ({"PKGCKPT_QUIET_MS": "soon"}, None, "PKGCKPT_QUIET_MS"),
        ({"PKGCKPT_SHUTDOWN_TIMEOUT": "-1"}, None, "PKGCKPT_SHUTDOWN_TIMEOUT"),
        ({"PKGCKPT_NO_INDEX": "perhaps"}, None, "PKGCKPT_NO_INDEX"),
        ({}, "quiet_ms = true\n", "quiet_ms"),
        ({}, "colour = 'blue'\n", "unknown setting 'colour'"),
        ({}, "store = [\n", "not valid TOML"),
    ],
)
def test_bad_values_are_usage_errors_naming_their_origin(
    files: dict[str, Path], environ: dict[str, str], text: str | None, message: str
) -> None:
    """A bad variable or file raises UsageError (exit 2) that says where it came from."""
    if text is not None:
        files["explicit"].write_text(text)
    with pytest.raises(UsageError, match=message) as err:
        config.load({}, files["explicit"] if text is not None else None, environ=environ)
    assert err.value.exit_code == 2


def test_a_missing_explicit_config_file_is_a_usage_error(files: dict[str, Path]) -> None:
    """--config naming no file is refused, not silently ignored."""
    with pytest.raises(UsageError, match="cannot read config file"):
        config.load({}, files["explicit"], environ={})


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's cache directory, where the private fallback runtime directory goes."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_runtime_dir_is_created_private(tmp_path: Path, cache: Path) -> None:
    """The runtime directory is created 0700 and used; ours with a loose mode is not."""
    path = tmp_path / "run" / "pkgckpt"
    assert config.ensure_runtime_dir(path) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    path.chmod(0o750)
    fallback = config.ensure_runtime_dir(path)
    assert fallback.parent == cache / "pkgckpt"
    assert stat.S_IMODE(fallback.stat().st_mode) == 0o700


def test_a_planted_runtime_dir_is_passed_over_for_the_private_fallback_once(
    tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A planted /tmp/pkgckpt-<uid> (symlink, or someone else's) is never used: the
    commands that write fall back to one private directory, the readers look there, and
    the warning is said once."""
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    fallback = config.ensure_runtime_dir(link)
    assert fallback != link and fallback.is_relative_to(cache)
    assert config.ensure_runtime_dir(link) == fallback
    assert config.find_runtime_dir(link) == fallback
    assert [r.message for r in caplog.records].count(
        f"runtime directory {link} is not ours (not a directory (or a symlink)): using {fallback}"
    ) == 1
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    os.chown(real, 4242, 4242)
    assert config.ensure_runtime_dir(real) == fallback
    assert config.load({"runtime_dir": real}, environ={}).runtime_dir == fallback


def test_the_fallback_stays_the_runtime_dir_once_the_planted_one_is_gone(
    tmp_path: Path, cache: Path
) -> None:
    """The usual directory, planted, sent this container's first command to the fallback,
    where its baseline is kept; whoever planted it then removes it. Readers and writers
    stay in the fallback, and the usual directory is not made again: a baseline taken
    there now would count the user's installs as the image's."""
    planted = tmp_path / "pkgckpt-1000"
    planted.mkdir(mode=0o777)
    planted.chmod(0o777)
    fallback = config.ensure_runtime_dir(planted)
    assert fallback.is_relative_to(cache)
    (fallback / "baseline.json").write_text("{}")
    planted.rmdir()
    assert config.find_runtime_dir(planted) == fallback
    assert config.ensure_runtime_dir(planted) == fallback
    assert not planted.exists()


def test_the_runtime_dir_follows_xdg_then_tmpdir(monkeypatch: pytest.MonkeyPatch) -> None:
    """XDG_RUNTIME_DIR/pkgckpt, else $TMPDIR/pkgckpt-<uid>, else /tmp/pkgckpt-<uid>."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/7")
    assert config.runtime_dir() == Path("/run/user/7/pkgckpt")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("TMPDIR", "/scratch")
    assert config.runtime_dir() == Path(f"/scratch/pkgckpt-{os.getuid()}")
    monkeypatch.delenv("TMPDIR")
    assert config.runtime_dir() == Path(f"/tmp/pkgckpt-{os.getuid()}")


def test_the_default_key_is_jupyterhub_user_then_the_login() -> None:
    """PKGCKPT_KEY wins, else JUPYTERHUB_USER (set by JupyterHub), else the login name."""
    login = config.default_key({})
    assert config.load({}, environ={}).key == login
    assert config.load({}, environ={"JUPYTERHUB_USER": "ada"}).key == "ada"
    both = {"JUPYTERHUB_USER": "ada", "PKGCKPT_KEY": "grace"}
    assert config.load({}, environ=both).key == "grace"
    assert config.load({}, environ={"JUPYTERHUB_USER": "ada"}).key_defaulted == "ada"
    assert config.load({}, environ={"PKGCKPT_KEY": "grace"}).key_defaulted is None


@pytest.mark.parametrize("login", ["jovyan", "rstudio", "root", "shared"])
def test_a_generic_login_is_refused_as_the_key_of_a_shared_store(
    tmp_path: Path, login: str
) -> None:
    """A key that fell back to a login every user of the image has is a usage error on a
    store other than the local default, with how to set one; set explicitly, it is used."""
    environ = {"JUPYTERHUB_USER": login, "PKGCKPT_GENERIC_USERS": "jovyan:rstudio:root:shared"}
    shared = config.load({"store": tmp_path / "nfs"}, environ=environ)
    with pytest.raises(UsageError) as refused:
        config.check_key(shared)
    assert str(refused.value).startswith(
        f"no key is set, and JUPYTERHUB_USER is {login!r}, a name every user of this image "
        f"shares: on the store {tmp_path / 'nfs'} all sessions would write one directory. "
        "Set a key per user: PKGCKPT_KEY=<user> in the environment, `key` in the config"
    )
    config.check_key(config.load({}, environ=environ))  # the local default store
    # The default written with `..`, or relative to the working directory, is the default.
    default = config.default_store()
    roundabout = default.parent / "x" / ".." / default.name
    config.check_key(config.load({"store": roundabout}, environ=environ))
    config.check_key(config.load({"store": tmp_path / "nfs", "key": login}, environ=environ))
    config.check_key(config.load({"store": tmp_path / "nfs"}, environ={"JUPYTERHUB_USER": "ada"}))


def test_a_generic_login_name_is_named_as_the_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without JUPYTERHUB_USER the key falls back to the login name, and the refusal says
    so, pointing at JUPYTERHUB_USER as what JupyterHub would have set."""
    monkeypatch.setenv("LOGNAME", "jovyan")
    shared = config.load({"store": tmp_path / "nfs"}, environ={})
    assert (shared.key_defaulted, shared.key_from_hub) == ("jovyan", False)
    with pytest.raises(UsageError, match="the login name 'jovyan' is one every user .* "
                       r"environment \(JupyterHub sets JUPYTERHUB_USER"):  # fmt: skip
        config.check_key(shared)


def test_the_key_defaulted_marker_is_not_a_setting(files: dict[str, Path]) -> None:
    """Nobody can claim a key was set by hand: key_defaulted is not read from anywhere."""
    files["user"].write_text('key_defaulted = "x"\n')
    with pytest.raises(UsageError, match="unknown setting"):
        config.load({}, environ={})
    files["user"].unlink()
    loaded = config.load({}, environ={"PKGCKPT_KEY_DEFAULTED": "x"})
    assert loaded.key_defaulted == config.default_key({})


def test_a_config_is_frozen_hashable_and_keyword_only(tmp_path: Path) -> None:
    """A Config takes keywords only, refuses assignment, equal settings hash alike, and
    its checks refuse a bad value as UsageError."""
    one = config.Config(store=tmp_path, key="k", runtime_dir=tmp_path)
    same = config.Config(store=tmp_path, key="k", runtime_dir=tmp_path)
    assert one == same and hash(one) == hash(same)
    with pytest.raises(AttributeError):
        one.key = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.Config(tmp_path)  # type: ignore[misc]
    with pytest.raises(UsageError, match="on_conflict"):
        config.Config(store=tmp_path, key="k", runtime_dir=tmp_path, on_conflict="neither")
    assert msgspec.structs.replace(one, key="other").key == "other"


def test_each_setting_is_coerced_by_its_declared_type() -> None:
    """`_coerce` reads each setting's annotation as written: paths, lists, numbers, flags."""
    assert config._FIELDS["env"] == "tuple[Path, ...]"
    assert "key_defaulted" not in config._FIELDS and "key_from_hub" not in config._FIELDS
    assert config._coerce("env", "~/a:/b", "x") == (Path("~/a").expanduser(), Path("/b"))
    assert config._coerce("store_uid", "7", "x") == 7
    assert config._coerce("artifacts", "off", "x") is False
    assert config._coerce("timeout", "1.5", "x") == 1.5
    assert config._coerce("metrics_file", "/m", "x") == Path("/m")
    with pytest.raises(UsageError, match="invalid value"):
        config._coerce("keep_generations", "-1", "x")


TEXTS = sorted(
    n
    for n, kind in config._FIELDS.items()
    if not kind.startswith("tuple") and ("Path" in kind or kind == "str")
)


@pytest.mark.parametrize("name", TEXTS)
@pytest.mark.parametrize("text", ['["/mnt/pkgckpt"]', '{name = "alice"}', "5"])
def test_a_text_or_path_setting_in_a_file_is_text(
    files: dict[str, Path], name: str, text: str
) -> None:
    """`store = ["/mnt/pkgckpt"]` named a directory `['/mnt/pkgckpt']` beneath wherever
    the command started, `key = {name = "alice"}` a key `{'name': 'alice'}`: a list, a
    table or a number where a setting takes text or a path is a usage error; so are a
    table for a list setting (it was the list of its keys) and a number in a list."""
    with pytest.raises(UsageError, match=f"invalid value .* for {name}"):
        _load_set(files, name, "file", text, None)


@pytest.mark.parametrize("text", ['{a = "/x"}', '["/x", 5]'])
def test_a_list_setting_in_a_file_is_a_list_of_text(files: dict[str, Path], text: str) -> None:
    with pytest.raises(UsageError, match=r"invalid value .* for env"):
        _load_set(files, "env", "file", text, None)


FLOATS = sorted(name for name, kind in config._FIELDS.items() if kind == "float")


def _load_set(
    files: dict[str, Path], name: str, origin: str, text: str, flag: object
) -> config.Config:
    """`config.load` with `name` set where `origin` says: `text` in the environment or in
    the explicit config file, `flag` as a flag (the value click hands over)."""
    environ = {f"PKGCKPT_{name.upper()}": text} if origin == "environment" else {}
    flags = {name: flag} if origin == "flag" else {}
    if origin == "file":
        files["explicit"].write_text(f"{name} = {text}\n")
    explicit = files["explicit"] if origin == "file" else None
    return config.load(flags, explicit, environ=environ)


def test_the_settings_in_seconds_are_these() -> None:
    """Every float setting is a number of seconds, bounded by MAX_SECONDS below."""
    assert FLOATS == ["jitter", "r_lock_stale", "rescan_interval", "shutdown_timeout", "timeout"]


@pytest.mark.parametrize("name", FLOATS)
@pytest.mark.parametrize("origin", ["environment", "file", "flag"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e9", "86400.5", "-1"])
def test_seconds_are_finite_and_at_most_a_day_wherever_they_are_set(
    files: dict[str, Path], name: str, origin: str, value: str
) -> None:
    """`inf` and `1e9` overflowed the waits they reached (an internal error) and NaN made
    every wait end at once: a usage error instead, from a flag, a variable or a file."""
    # TOML's own inf and nan, and numbers, in the file; the flag as click hands it over.
    with pytest.raises(UsageError, match=f"for {name}: seconds, from 0 to 86400") as err:
        _load_set(files, name, origin, value, float(value))
    assert err.value.exit_code == 2


@pytest.mark.parametrize("name", FLOATS)
def test_a_day_and_zero_are_taken(files: dict[str, Path], name: str) -> None:
    """The bounds themselves are seconds like any other; a TOML boolean is no number."""
    for value in ("0", "86400", "86400.0", "0.5"):
        loaded = config.load({}, None, environ={f"PKGCKPT_{name.upper()}": value})
        assert getattr(loaded, name) == float(value)
    files["explicit"].write_text(f"{name} = 86400\n")
    assert getattr(config.load({}, files["explicit"], environ={}), name) == 86400.0
    files["explicit"].write_text(f"{name} = true\n")
    with pytest.raises(UsageError, match=f"invalid value True for {name}"):
        config.load({}, files["explicit"], environ={})


INTS = sorted(name for name, kind in config._FIELDS.items() if kind in ("int", "int | None"))


def test_the_integer_settings_are_these() -> None:
    """Every integer setting has its bounds in INT_BOUNDS, checked below."""
    assert INTS == sorted(config.INT_BOUNDS) == [
        "artifact_quota", "artifact_retries", "keep_generations", "max_delay_ms",
        "max_download_bytes", "quiet_ms", "store_uid",
    ]  # fmt: skip
    assert config.INT_BOUNDS["quiet_ms"][1] == config.MAX_MS == 1000 * config.MAX_SECONDS


@pytest.mark.parametrize("name", INTS)
@pytest.mark.parametrize("origin", ["environment", "file", "flag"])
@pytest.mark.parametrize("beyond", ["above", "below", "huge", "enormous"])
def test_integers_beyond_their_bounds_are_usage_errors_wherever_they_are_set(
    files: dict[str, Path], name: str, origin: str, beyond: str
) -> None:
    """quiet_ms=10**12 left every change unrecorded until the daemon stopped, and 10**400
    was an internal error (no float holds it): a usage error (exit 2) naming the bounds,
    from a flag, a variable or a file."""
    low, high, what = config.INT_BOUNDS[name]
    value = {"above": high + 1, "below": low - 1, "huge": 10**12, "enormous": 10**400}[beyond]
    if beyond == "huge" and high >= 10**12:
        value = 10**18
    with pytest.raises(UsageError, match=f"for {name}: {what}, from {low} to {high}$") as err:
        _load_set(files, name, origin, str(value), value)
    assert err.value.exit_code == 2


@pytest.mark.parametrize("name", INTS)
def test_integer_bounds_are_taken_and_a_toml_float_only_when_whole(
    files: dict[str, Path], name: str
) -> None:
    """The bounds themselves are taken; a TOML `500.0` is 500, but 1.5 is not cut to 1 and
    `inf` is no internal error (OverflowError): both are usage errors."""
    low, high, _ = config.INT_BOUNDS[name]
    for value in (low, high):
        assert (
            getattr(config.load({}, None, environ={f"PKGCKPT_{name.upper()}": str(value)}), name)
            == value
        )
    files["explicit"].write_text(f"{name} = {float(low + 1)}\n")
    assert getattr(config.load({}, files["explicit"], environ={}), name) == low + 1
    for text in ("1.5", "inf", "nan", "-inf", "true"):
        files["explicit"].write_text(f"{name} = {text}\n")
        with pytest.raises(UsageError, match=f"invalid value .* for {name}"):
            config.load({}, files["explicit"], environ={})


PATHS = sorted(name for name, kind in config._FIELDS.items() if kind in ("Path", "Path | None"))


def test_the_single_path_settings_are_these() -> None:
    assert PATHS == [
        "artifact_pool", "baseline", "metrics_file", "own_env", "r_home", "runtime_dir", "store",
        "store_secret_file",
    ]  # fmt: skip


@pytest.mark.parametrize("name", PATHS)
@pytest.mark.parametrize("origin", ["environment", "file"])
def test_an_empty_path_setting_is_a_usage_error_not_the_working_directory(
    files: dict[str, Path], name: str, origin: str
) -> None:
    """PKGCKPT_STORE= (a pod spec's variable whose template had no value) made the store
    the working directory. Falling back to the default instead would as silently keep the
    user's packages in the container, not on the store: it is a usage error (exit 2)."""
    environ = {f"PKGCKPT_{name.upper()}": ""} if origin == "environment" else {}
    if origin == "file":
        files["explicit"].write_text(f'{name} = ""\n')
    explicit = files["explicit"] if origin == "file" else None
    with pytest.raises(UsageError, match=f"{name} is empty") as err:
        config.load({}, explicit, environ=environ)
    assert err.value.exit_code == 2


def test_an_empty_pkgckpt_config_is_a_usage_error(files: dict[str, Path]) -> None:
    with pytest.raises(UsageError, match="PKGCKPT_CONFIG is empty"):
        config.load({}, None, environ={"PKGCKPT_CONFIG": ""})


def test_empty_list_settings_still_mean_none(files: dict[str, Path]) -> None:
    """A list setting's empty value is the empty list, as before (PKGCKPT_DISCOVER=)."""
    loaded = config.load({}, None, environ={"PKGCKPT_DISCOVER": "", "PKGCKPT_ENV": ""})
    assert loaded.discover == () and loaded.env == ()
