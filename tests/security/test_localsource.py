"""The owner walk of local sources (`pkgckpt.localsource.path_problem`) against a real
second user: what bob can rearrange above a source is not trusted."""

from __future__ import annotations

import os
from pathlib import Path

from pkgckpt.localsource import directory_problem, path_problem

from .conftest import User


def _source(parent: Path) -> Path:
    """A root-owned project directory in `parent`, and a source directory in it."""
    project = parent / "project"
    project.mkdir(mode=0o755)
    source = project / "src"
    source.mkdir(mode=0o755)
    (source / "setup.py").write_text("print('genuine')\n")
    return source


def test_a_root_owned_directory_in_one_another_user_owns_is_not_trusted(
    bob: User, reachable_tmp: Path
) -> None:
    """bob owns the directory above a root-owned project: he cannot change what the
    project holds, but he can rename the project away and put his own in its place
    between restore's check and the install. The source is refused, naming bob's
    directory; then bob does exactly that, for real."""
    bobs = reachable_tmp / "bobs"
    bobs.mkdir(mode=0o755)
    os.chown(bobs, bob.uid, bob.gid)
    source = _source(bobs)
    owned = f"{bobs} is owned by {bob.name} (uid {bob.uid}), not by you or root"
    assert path_problem(str(source)) == f"{source}: {owned}"
    assert directory_problem(str(source.parent), "src") == f"{source.parent}: {owned}"

    assert bob.run(["mv", str(source.parent), str(bobs / "away")]).returncode == 0
    assert bob.run(["mkdir", "-p", str(source)]).returncode == 0
    planted = bob.run(["sh", "-c", f"echo \"print('bob')\" > {source}/setup.py"])
    assert planted.returncode == 0, planted.stderr
    assert (source / "setup.py").read_text() == "print('bob')\n"


def test_a_root_owned_directory_in_one_others_can_write_is_trusted_only_if_sticky(
    bob: User, reachable_tmp: Path
) -> None:
    """A root-owned project in a directory everyone may write: bob can rename it away
    unless that directory has the sticky bit (as /tmp does), which leaves renaming an
    entry to its owner; with it the source is trusted, without it refused."""
    shared = reachable_tmp / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    source = _source(shared)
    assert path_problem(str(source)) == f"{source}: {shared} is writable by others"

    shared.chmod(0o1777)
    assert path_problem(str(source)) is None
    moved = bob.run(["mv", str(source.parent), str(shared / "away")])
    assert moved.returncode != 0, "bob renamed root's project in a sticky directory"


def test_a_directory_source_others_can_write_is_not_trusted_even_if_sticky(
    bob: User, reachable_tmp: Path
) -> None:
    """The directory the installer is given is itself world-writable with the sticky bit,
    like /tmp: bob cannot replace its files, but he can add one the build reads (here a
    pyproject.toml beside the project's setup.py, naming a backend of his). The source is
    refused, and still is once closed while his file is in it; a level above it with the
    sticky bit is not a reason to refuse."""
    project = reachable_tmp / "project"
    project.mkdir(mode=0o755)
    (project / "setup.py").write_text("print('genuine')\n")
    project.chmod(0o1777)
    assert directory_problem(str(project)) == (
        f"{project} is writable by others: they could add files the installer reads"
    )
    assert directory_problem(str(reachable_tmp), "project") == (
        f"{project} is writable by others: they could add files the installer reads"
    )
    planted = project / "pyproject.toml"
    assert bob.run(["sh", "-c", f"echo '[build-system]' > {planted}"]).returncode == 0
    assert planted.exists()

    project.chmod(0o755)
    reachable_tmp.chmod(0o1777)
    owned = f"{planted} is owned by {bob.name} (uid {bob.uid}), not by you or root"
    assert directory_problem(str(reachable_tmp), "project") == owned, "bob's file stays"
    planted.unlink()
    assert directory_problem(str(reachable_tmp), "project") is None


def test_what_lies_below_a_directory_source_is_checked_too(bob: User, reachable_tmp: Path) -> None:
    """The source directory is root's and closed, but the build reads what is below it
    too: a package directory in it that others can write (bob replaces its __init__.py),
    a file of bob's, or a link to a directory of his refuses the source, each named."""
    project = reachable_tmp / "project"
    package = project / "pkg"
    package.mkdir(parents=True, mode=0o755)
    project.chmod(0o755)
    (project / "setup.py").write_text("print('genuine')\n")
    (package / "__init__.py").write_text("")
    assert directory_problem(str(project)) is None

    package.chmod(0o777)
    assert bob.run(["sh", "-c", f"echo 'import os' > {package}/x && mv {package}/x "
                    f"{package}/__init__.py"]).returncode == 0  # fmt: skip
    assert directory_problem(str(project)) == f"{package} is writable by others"
    package.chmod(0o755)
    init = package / "__init__.py"
    assert directory_problem(str(project)) == (
        f"{init} is owned by {bob.name} (uid {bob.uid}), not by you or root"
    )
    init.unlink()
    bobs = reachable_tmp / "bobs"
    bobs.mkdir(mode=0o755)
    os.chown(bobs, bob.uid, bob.gid)
    (package / "data").symlink_to(bobs)
    assert directory_problem(str(project)) == (
        f"{package / 'data'}: {bobs} is owned by {bob.name} (uid {bob.uid}), not by you or root"
    )
