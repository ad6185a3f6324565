"""Where RStudio's rsession.conf is and what its `r-libs-user` says, as RStudio reads it;
a file that root does not own alone names nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from pkgckpt.scan import rstudio


def conf(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "rsession.conf"
    path.write_text(text)
    path.chmod(0o644)
    return path


def test_rstudio_config_dir_wins_over_xdg_config_dirs(tmp_path: Path) -> None:
    """RSTUDIO_CONFIG_DIR names the directory; XDG_CONFIG_DIRS is then not searched."""
    conf(tmp_path / "xdg" / "rstudio", "r-libs-user=/from/xdg\n")
    conf(tmp_path / "own", "r-libs-user=/from/own\n")
    environ = {
        "RSTUDIO_CONFIG_DIR": str(tmp_path / "own"),
        "XDG_CONFIG_DIRS": str(tmp_path / "xdg"),
    }
    assert rstudio.libs_user(environ) == "/from/own"


def test_the_first_xdg_config_dir_holding_the_file_is_read(tmp_path: Path) -> None:
    """XDG_CONFIG_DIRS is searched in order for `rstudio/rsession.conf`."""
    (tmp_path / "a" / "rstudio").mkdir(parents=True)
    conf(tmp_path / "b" / "rstudio", "r-libs-user=/from/b\n")
    conf(tmp_path / "c" / "rstudio", "r-libs-user=/from/c\n")
    dirs = ":".join(str(tmp_path / d) for d in "abc")
    assert rstudio.libs_user({"XDG_CONFIG_DIRS": dirs}) == "/from/b"


def test_comments_blanks_and_other_keys_are_read_as_rstudio_reads_them(tmp_path: Path) -> None:
    """`#` starts a comment anywhere; blanks around key and value do not count."""
    conf(tmp_path, "# r-libs-user=/commented\nr-libs-userx=/other\n r-libs-user = ~/R/%v # x\n")
    assert rstudio.libs_user({"RSTUDIO_CONFIG_DIR": str(tmp_path)}) == "~/R/%v"


@pytest.mark.parametrize("text", ["r-libs-user=\n", "session-timeout-minutes=0\n"])
def test_an_empty_or_missing_value_names_nothing(tmp_path: Path, text: str) -> None:
    """No value: RStudio leaves R_LIBS_USER alone."""
    conf(tmp_path, text)
    assert rstudio.libs_user({"RSTUDIO_CONFIG_DIR": str(tmp_path)}) is None


def test_a_repeated_key_names_nothing_and_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """RStudio refuses a file that sets r-libs-user twice: which one would count is unknown."""
    conf(tmp_path, "r-libs-user=/a\nr-libs-user=/b\n")
    assert rstudio.libs_user({"RSTUDIO_CONFIG_DIR": str(tmp_path)}) is None
    assert "set 2 times" in caplog.text


def test_a_config_map_link_to_a_root_owned_file_is_read(tmp_path: Path) -> None:
    """A Kubernetes ConfigMap mount makes rsession.conf a link into `..data/`: what it
    leads to is checked and read."""
    conf(tmp_path / "..data", "r-libs-user=/from/configmap\n")
    (tmp_path / "rsession.conf").symlink_to("..data/rsession.conf")
    assert rstudio.libs_user({"RSTUDIO_CONFIG_DIR": str(tmp_path)}) == "/from/configmap"


def test_an_oversized_file_names_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file over MAX_BYTES is not read."""
    conf(tmp_path, "#" * rstudio.MAX_BYTES + "\nr-libs-user=/a\n")
    assert rstudio.libs_user({"RSTUDIO_CONFIG_DIR": str(tmp_path)}) is None
    assert "too large" in caplog.text


def test_a_value_holding_a_nul_byte_names_nothing_and_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A NUL byte cannot be in R_LIBS_USER: the file is ignored, never handed to R."""
    path = tmp_path / "rsession.conf"
    path.write_bytes(b"r-libs-user=/srv/lib\x00/other\n")
    path.chmod(0o644)
    assert rstudio.libs_user({"RSTUDIO_CONFIG_DIR": str(tmp_path)}) is None
    assert "NUL" in caplog.text


@pytest.mark.parametrize(
    "text, value",
    [
        ("r-libs-user=/a\r/b\n", "/a\r/b"),
        ("session-timeout-minutes=0\rr-libs-user=/b\n", None),
        ("r-libs-user=/a\x85b\u2028c\x0c\n", "/a\x85b\u2028c\x0c"),
    ],
)
def test_only_a_newline_ends_a_line_and_only_ascii_blanks_are_trimmed(
    tmp_path: Path, text: str, value: str | None
) -> None:
    """boost splits lines at '\\n' alone and trims " \\t\\r\\n": a carriage return or a Unicode
    line break inside a line is part of the value RStudio sets, never a line of its own."""
    conf(tmp_path, text)
    assert rstudio.libs_user({"RSTUDIO_CONFIG_DIR": str(tmp_path)}) == value
