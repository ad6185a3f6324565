"""Tiny R packages and a local CRAN-like repository for the tests, built with real R.

The sources beside this file (renv keeps its fake packages the same way):

- `ckpt.base`   pure R, a dot in its name;
- `ckptImports` imports `ckpt.base`, so it must be restored after it;
- `ckptAfirst`  imports `ckptImports`: name order is the wrong install order;
- `ckptC`       C code that restore must compile;
- `ckptOld`     the repository serves 1.0, while 0.9-1 lives only in its archive;
- `ckptGone`    an image package that the user removes;
- `ckptBroken`  R code that does not parse: R CMD INSTALL fails;
- `ckptNoLoad`  installs, but its `.onLoad` fails.

`R CMD build` makes the tarballs (one R process for all of them) and
`tools::write_PACKAGES` indexes them, so the repository is what `install.packages()`
reads from CRAN, with `file://` URLs and no network.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

SOURCES = Path(__file__).parent

CURRENT: tuple[tuple[str, str], ...] = (
    ("ckpt.base", "1.0.0"),
    ("ckptImports", "1.2.0"),
    ("ckptAfirst", "2.0.1"),
    ("ckptC", "0.3.1"),
    ("ckptOld", "1.0"),
    ("ckptGone", "1.0"),
    ("ckptBroken", "1.0"),
    ("ckptNoLoad", "1.0"),
)
ARCHIVED: tuple[tuple[str, str], ...] = (("ckptOld", "0.9-1"),)

RSCRIPT = ("Rscript", "--vanilla")
REPOSITORY = "ckptrepo"
"""The `Repository:` field of the packages the test repository serves."""


@dataclass(frozen=True)
class Repo:
    root: Path

    @property
    def url(self) -> str:
        return self.root.as_uri()

    @property
    def contrib(self) -> Path:
        return self.root / "src" / "contrib"

    def tarball(self, name: str, version: str) -> Path:
        """The tarball of `name` `version`: in `src/contrib`, else in its archive."""
        current = self.contrib / f"{name}_{version}.tar.gz"
        if current.exists():
            return current
        return self.contrib / "Archive" / name / f"{name}_{version}.tar.gz"


def _run(cmd: Sequence[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")


def stage(name: str, version: str, dest: Path, source: Path | None = None) -> Path:
    """Copy a package source to `dest/<name>-<version>/<name>` with its Version rewritten."""
    target = dest / f"{name}-{version}" / name
    shutil.copytree(source or SOURCES / name, target)
    description = target / "DESCRIPTION"
    text = re.sub(r"(?m)^Version:.*$", f"Version: {version}", description.read_text())
    # What CRAN-like repositories add to every package they serve; a package without it
    # was built locally (see `local_tarball`).
    description.write_text(text.rstrip("\n") + f"\nRepository: {REPOSITORY}\n")
    return target


def local_tarball(name: str, version: str, dest: Path) -> Path:
    """`R CMD build` of a fixture as a user would build it: no `Repository:` field."""
    target = dest / f"{name}-{version}" / name
    shutil.copytree(SOURCES / name, target)
    description = target / "DESCRIPTION"
    text = re.sub(r"(?m)^Version:.*$", f"Version: {version}", description.read_text())
    description.write_text(text)
    _run(["R", "CMD", "build", "--no-build-vignettes", "--no-manual", str(target)], dest)
    return dest / f"{name}_{version}.tar.gz"


def synthetic(
    dest: Path, count: int, chain: int = 1, prefix: str = "ckptSyn"
) -> list[tuple[str, str, Path]]:
    """`count` pure-R packages in chains of `chain` (each imports the one before it in its
    chain), for benchmarks: (name, version, source directory) each."""
    made = []
    for i in range(count):
        name = f"{prefix}{i:03d}"
        src = dest / "src" / name
        (src / "R").mkdir(parents=True)
        imports = f"Imports: {prefix}{i - 1:03d}\n" if i % chain else ""
        (src / "DESCRIPTION").write_text(
            f"Package: {name}\nVersion: 1.0.{i}\nTitle: Synthetic Package {i}\n"
            "Description: A synthetic package for the pkgckpt benchmarks.\n"
            'Authors@R: person("pkgckpt", "tests", email = "tests@example.org",'
            ' role = c("aut", "cre"))\n'
            f"License: MIT\n{imports}Encoding: UTF-8\nRepository: {REPOSITORY}\n"
        )
        (src / "NAMESPACE").write_text(f"export(value{i})\n")
        (src / "R" / "value.R").write_text(f"value{i} <- function() {i}L\n")
        made.append((name, f"1.0.{i}", src))
    return made


def build_repo(
    root: Path,
    current: Iterable[tuple[str, str]] = CURRENT,
    archived: Iterable[tuple[str, str]] = ARCHIVED,
    sources: dict[str, Path] | None = None,
) -> Repo:
    """Build the tarballs with `R CMD build` and index them with `tools::write_PACKAGES`.

    `sources` maps package names to source directories outside this folder (synthetic ones).
    """
    repo = Repo(root)
    staging = root.parent / f"{root.name}-staging"
    repo.contrib.mkdir(parents=True)
    wanted = [(n, v, False) for n, v in current] + [(n, v, True) for n, v in archived]
    dirs = [stage(n, v, staging, (sources or {}).get(n)) for n, v, _ in wanted]
    build = staging / "build"
    build.mkdir()
    # One R process builds them all: R CMD build takes any number of package directories.
    _run(["R", "CMD", "build", "--no-build-vignettes", "--no-manual", *map(str, dirs)], build)
    for name, version, old in wanted:
        tarball = build / f"{name}_{version}.tar.gz"
        dest = repo.contrib / "Archive" / name if old else repo.contrib
        dest.mkdir(parents=True, exist_ok=True)
        shutil.move(tarball, dest / tarball.name)
    _run(
        [*RSCRIPT, "-e", 'tools::write_PACKAGES(commandArgs(TRUE)[1], type = "source")', "."],
        repo.contrib,
    )
    shutil.rmtree(staging)
    return repo


def rscript(expr: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run `Rscript --vanilla -e expr args...` (values reach R as `commandArgs(TRUE)`)."""
    done = subprocess.run(
        [*RSCRIPT, "-e", expr, *args], capture_output=True, text=True, check=False, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"Rscript -e {expr!r} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def install(
    lib: Path, repo: Repo, names: Sequence[str] = (), tarballs: Sequence[Path] = ()
) -> None:
    """What a user types: `install.packages(names, repos = "file://...")`, and tarballs.

    `warn = 2`: install.packages only warns when a package fails to install.
    """
    lib.mkdir(parents=True, exist_ok=True)
    if names:
        rscript(
            "options(warn = 2); a <- commandArgs(TRUE); "
            "install.packages(a[-(1:2)], lib = a[1], repos = a[2])",
            str(lib),
            repo.url,
            *names,
        )
    for tarball in tarballs:
        rscript(
            "options(warn = 2); a <- commandArgs(TRUE); "
            'install.packages(a[2], lib = a[1], repos = NULL, type = "source")',
            str(lib),
            str(tarball),
        )


def installed(lib: Path) -> dict[str, str]:
    """`installed.packages()` of one library: Package -> Version, as R itself sees it."""
    out = rscript(
        "ip <- installed.packages(lib.loc = commandArgs(TRUE)[1], noCache = TRUE); "
        'cat(paste(ip[, "Package"], ip[, "Version"], sep = "\\t"), sep = "\\n")',
        str(lib),
    )
    return dict(line.split("\t") for line in out.splitlines() if line)


_shared: dict[str, Repo] = {}


def shared_repo(base: Path) -> Repo:
    """The default repository, built once per test session (under `base`, a session tmp)."""
    if "repo" not in _shared:
        _shared["repo"] = build_repo(base / "cran")
    return _shared["repo"]


def have_r() -> bool:
    return shutil.which("Rscript") is not None and shutil.which("R") is not None


NO_R = "Rscript not found: R is not installed (scripts/test installs r-base-core when it can)"


F = TypeVar("F", bound=Callable[..., object])


def needs_r(test: F) -> F:
    """Mark a test `r` and skip it, saying why, only when R is not installed."""
    return pytest.mark.r(pytest.mark.skipif(not have_r(), reason=NO_R)(test))  # type: ignore[no-any-return]
