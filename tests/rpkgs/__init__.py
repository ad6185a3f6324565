"""Tiny R packages and a local CRAN-like repository for the tests, built with real R.

The sources beside this file (renv keeps its fake packages the same way):

- `ckpt.base`   pure R, a dot in its name;
- `ckptImports` imports `ckpt.base`, so it must be restored after it;
- `ckptC`       C code that restore must compile;
- `ckptOld`     the repository serves 1.0, while 0.9-1 lives only in its archive.

`R CMD build` makes the tarballs (one R process for all of them) and
`tools::write_PACKAGES` indexes them, so the repository is what `install.packages()`
reads from CRAN, with `file://` URLs and no network.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SOURCES = Path(__file__).parent

CURRENT: tuple[tuple[str, str], ...] = (
    ("ckpt.base", "1.0.0"),
    ("ckptImports", "1.2.0"),
    ("ckptC", "0.3.1"),
    ("ckptOld", "1.0"),
)
ARCHIVED: tuple[tuple[str, str], ...] = (("ckptOld", "0.9-1"),)

RSCRIPT = ("Rscript", "--vanilla")


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
    description.write_text(text)
    return target


def synthetic(dest: Path, count: int, prefix: str = "ckptSyn") -> list[tuple[str, str, Path]]:
    """`count` pure-R packages in a chain (each imports the one before) for benchmarks."""
    made = []
    for i in range(count):
        name = f"{prefix}{i:03d}"
        src = dest / "src" / name
        (src / "R").mkdir(parents=True)
        imports = f"Imports: {prefix}{i - 1:03d}\n" if i else ""
        (src / "DESCRIPTION").write_text(
            f"Package: {name}\nVersion: 1.0.{i}\nTitle: Synthetic Package {i}\n"
            "Description: A synthetic package for the pkgckpt benchmarks.\n"
            'Authors@R: person("pkgckpt", "tests", email = "tests@example.org",'
            ' role = c("aut", "cre"))\n'
            f"License: MIT\n{imports}Encoding: UTF-8\n"
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
