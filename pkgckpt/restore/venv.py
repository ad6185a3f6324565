"""A venv whose Python the image took away, made again at its path before restore plans.

A new image that moves its Python to another minor version (3.11 to 3.12) strands every
venv made from the old one: `bin/python3.11` leads to `/opt/conda/bin/python3.11`, which
is gone. Its kernel no longer starts, and nothing can be installed into it. A venv made
with `python3 -m venv` fares no better: its `bin/python` leads to `/opt/conda/bin/python3`,
which now runs 3.12, and 3.12 sees none of `lib/python3.11` (the user's packages, its
pip). Restore makes such a venv again, in place, when the record has packages for it and
restore would track it (`--env`, or a kernelspec: one whose missing `bin/python` or
`bin/python3` it is, or that discovery found running it):

- with the interpreter that took the old one's place in the directory `pyvenv.cfg` names
  (`home`): `home/python3 -I -m venv PREFIX`, keeping the old `pyvenv.cfg`'s system site
  packages and prompt, and its pip when it had one;
- after taking away only the interpreter links in `bin` that lead nowhere, which `venv`
  would otherwise leave as they are. A link by the old version's name that leads
  somewhere (`bin/python3.11 -> python`) stays, and runs the new Python: a kernelspec
  may name it.

Which Python a link runs is read from the name its path resolves to (`python3.12`); a
Python whose name says no version is taken to be the one the venv was made with.

Nothing else in the prefix is touched: the old `lib/python3.11` stays, unused by the new
interpreter. The recorded packages then come back as they do onto any new interpreter
(rebuilt for it, never an old ABI's wheel). Without such a `home/python3`, the venv is
left alone and the report says how to make it again.

The prefix and `home` come from the user's own files: both must pass `trust.unsafe`
before anything in them is started or removed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec

from ..manifest import visible as _visible
from ..runner import Deadline, call
from ..trust import read_owned, unsafe

_CFG_MAX = 64 * 1024
# --clear: venv leaves the dead links to the old interpreter in place otherwise, and the
# old interpreter's files are of no use to the new one.
_AGAIN = (
    "make it again with this image's Python (python3 -m venv --clear {path}), then run "
    "pkgckpt restore"
)


class Stranded(msgspec.Struct, frozen=True, kw_only=True):
    """A venv whose interpreter links lead nowhere, or to another minor version."""

    prefix: Path
    gone: str
    """Where its interpreter link led."""
    runs: str | None = None
    """The `X.Y` that `gone` runs now, where it is there; None: it is gone."""
    made: str | None = None
    """The `X.Y` that pyvenv.cfg says the venv was made with, where `runs` is given."""
    home: Path | None
    """pyvenv.cfg's `home`, when it names an absolute directory."""
    system_site: bool = False
    prompt: str | None = None
    pip: bool = False

    def python(self) -> tuple[Path | None, str]:
        """The interpreter that makes it again, or (None, why there is none)."""
        if self.home is None:
            return None, "its pyvenv.cfg names no home directory"
        python = self.home / "python3"
        why = unsafe(python)
        if why is None and not os.access(python, os.X_OK):
            why = "not executable"
        if why is not None:
            return None, f"{python}: {why}"
        return python, ""

    def describe(self) -> str:
        """What restore does about it, for `status`."""
        python, why = self.python()
        gone = _why(self.gone, self.runs, self.made)
        if python is None:
            return f"{gone}, and restore cannot make it again ({_visible(why)}): " + _AGAIN.format(
                path=_visible(str(self.prefix))
            )
        return f"{gone}: pkgckpt restore makes the venv again with {_visible(str(python))}"


class Remade(msgspec.Struct, frozen=True, kw_only=True):
    """A stranded venv, and what restore did about it."""

    path: str
    gone: str
    python: str | None = None
    """The interpreter it was made again with; None: it was not."""
    error: str | None = None
    """Why it was not made again; None: it was, or a dry run would."""
    runs: str | None = None
    made: str | None = None
    """As Stranded's."""

    def render(self, dry_run: bool = False) -> str:
        path, why = _visible(self.path), _why(self.gone, self.runs, self.made)
        if self.error is not None:
            again = _AGAIN.format(path=path)
            return (
                f"Not made again: the venv {path} ({why}): "
                f"{_visible(self.error)}. {again[:1].upper()}{again[1:]}."
            )
        verb = "Would make" if dry_run else "Made"
        return f"{verb} the venv {path} again with {_visible(self.python or '')}: {why}."


def _why(gone: str, runs: str | None, made: str | None) -> str:
    if runs is None:
        return f"its interpreter {_visible(gone)} is gone"
    return f"its interpreter {_visible(gone)} is Python {runs}, and the venv was made for {made}"


_VERSIONED = re.compile(r"(?:python|pypy)(\d+\.\d+)[a-z]*", re.ASCII)
"""An interpreter's file name that says its version: `python3.12`, `python3.13t`."""


def _interpreter_name(name: str) -> bool:
    """`python`, `python3`, `python3.11`, `pypy3.10`: what venv links to an interpreter."""
    for stem in ("python", "pypy"):
        if name.startswith(stem):
            return all(c in "0123456789." for c in name[len(stem) :])
    return False


def stranded(prefix: Path) -> Stranded | None:
    """The venv at `prefix` when the interpreter links of its `bin` lead nowhere, or the
    first that leads somewhere runs another minor version than pyvenv.cfg's."""
    bin_dir = prefix / "bin"
    gone, runs = "", None
    for name in ("python3", "python"):
        link = bin_dir / name
        if os.path.exists(link):  # noqa: PTH110
            gone = os.path.realpath(link)
            found = _VERSIONED.fullmatch(os.path.basename(gone))  # noqa: PTH119
            if found is None:
                return None
            runs = found[1]
            break
        if os.path.islink(link) and not gone:  # noqa: PTH114
            gone = os.path.realpath(link)
    # The file and every directory above it, the prefix among them (`trust.unsafe`).
    if not gone or unsafe(prefix / "pyvenv.cfg") is not None:
        return None
    try:
        text = read_owned(prefix / "pyvenv.cfg", _CFG_MAX, root_ok=True).decode()
    except (OSError, UnicodeDecodeError):
        return None
    cfg: dict[str, str] = {}
    for line in text.splitlines():
        key, equals, value = line.partition("=")
        if equals:
            cfg[key.strip().lower().replace("_", "-")] = value.strip()
    made = None
    if runs is not None:
        # `version` (venv), `version_info` (uv, and venv since 3.11): 3.11.7 or 3.11.7.final.0
        release = cfg.get("version-info") or cfg.get("version") or ""
        made = ".".join(release.split(".")[:2])
        if made == runs or not re.fullmatch(r"\d+\.\d+", made):
            return None
    home = cfg.get("home", "")
    prompt = cfg.get("prompt")
    if prompt and len(prompt) > 1 and prompt[0] == prompt[-1] == "'":
        prompt = prompt[1:-1]  # venv writes it as repr() does
    return Stranded(
        prefix=prefix,
        gone=gone,
        runs=runs,
        made=made,
        home=Path(home) if home.startswith("/") and "\0" not in home else None,
        system_site=cfg.get("include-system-site-packages", "").lower() == "true",
        prompt=prompt or None,
        pip=os.path.isfile(bin_dir / "pip"),  # noqa: PTH113
    )


def kernel_prefix(python: Path) -> Path | None:
    """The prefix of a kernelspec's interpreter that is a venv's own link to its Python:
    `bin/python` or `bin/python3`, which a venv made again has again."""
    if python.name in ("python", "python3") and python.parent.name == "bin":
        return python.parent.parent
    return None


def remake(venv: Stranded, deadline: Deadline, *, dry_run: bool = False) -> Remade:
    """Make `venv` again at its prefix with the interpreter of its `home`; `dry_run`: say
    with which, changing nothing."""

    def remade(**what: str) -> Remade:
        return Remade(path=str(venv.prefix), gone=venv.gone, runs=venv.runs, made=venv.made, **what)

    python, why = venv.python()
    if python is None:
        return remade(error=why)
    if dry_run:
        return remade(python=str(python))
    bin_dir = venv.prefix / "bin"
    try:
        for entry in os.scandir(bin_dir):
            # Only links that lead nowhere: venv leaves any link that exists as it is. The
            # old version's own name (`python3.11 -> python`) stays, running the new one:
            # a kernelspec may start the venv by it (ipykernel writes sys.executable).
            named = _interpreter_name(entry.name)
            if named and entry.is_symlink() and not os.path.exists(entry.path):  # noqa: PTH110
                os.unlink(entry.path)  # noqa: PTH108
    except OSError as e:
        return remade(error=f"{bin_dir}: {e.strerror}")
    argv = [str(python), "-I", "-m", "venv"]
    if venv.system_site:
        argv.append("--system-site-packages")
    if not venv.pip:
        argv.append("--without-pip")
    if venv.prompt:
        argv += ["--prompt", venv.prompt]
    outcome = call([*argv, str(venv.prefix)], deadline=deadline)
    if not outcome.ok:
        return remade(error=f"{python} -m venv: {outcome.tail(4)}")
    return remade(python=str(python))
