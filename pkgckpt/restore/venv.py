"""A venv whose Python the image took away, made again at its path before restore plans.

A new image that moves its Python to another minor version (3.11 to 3.12) strands every
venv made from the old one: `bin/python3.11` leads to `/opt/conda/bin/python3.11`, which
is gone. Its kernel no longer starts, and nothing can be installed into it. Restore makes
such a venv again, in place, when the record has packages for it and restore would track
it (`--env`, or a kernelspec whose `bin/python` or `bin/python3` it is):

- with the interpreter that took the old one's place in the directory `pyvenv.cfg` names
  (`home`): `home/python3 -I -m venv PREFIX`, keeping the old `pyvenv.cfg`'s system site
  packages and prompt, and its pip when it had one;
- after taking away only the interpreter links in `bin` that lead nowhere, which `venv`
  would otherwise leave as they are.

Nothing else in the prefix is touched: the old `lib/python3.11` stays, unused by the new
interpreter. The recorded packages then come back as they do onto any new interpreter
(rebuilt for it, never an old ABI's wheel). Without such a `home/python3`, the venv is
left alone and the report says how to make it again.

The prefix and `home` come from the user's own files: both must pass `trust.unsafe`
before anything in them is started or removed.
"""

from __future__ import annotations

import os
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
    """A venv whose interpreter links lead nowhere."""

    prefix: Path
    gone: str
    """Where its interpreter link led."""
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
        gone = f"its interpreter {_visible(self.gone)} is gone"
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

    def render(self, dry_run: bool = False) -> str:
        path, gone = _visible(self.path), _visible(self.gone)
        if self.error is not None:
            again = _AGAIN.format(path=path)
            return (
                f"Not made again: the venv {path}, whose interpreter {gone} is gone: "
                f"{_visible(self.error)}. {again[:1].upper()}{again[1:]}."
            )
        verb = "Would make" if dry_run else "Made"
        return (
            f"{verb} the venv {path} again with {_visible(self.python or '')}: "
            f"its interpreter {gone} is gone."
        )


def _interpreter_name(name: str) -> bool:
    """`python`, `python3`, `python3.11`, `pypy3.10`: what venv links to an interpreter."""
    for stem in ("python", "pypy"):
        if name.startswith(stem):
            return all(c in "0123456789." for c in name[len(stem) :])
    return False


def stranded(prefix: Path) -> Stranded | None:
    """The venv at `prefix` when every interpreter link of its `bin` leads nowhere."""
    bin_dir = prefix / "bin"
    gone = ""
    for name in ("python3", "python"):
        link = bin_dir / name
        if os.path.exists(link):  # noqa: PTH110 (a link that resolves: not stranded)
            return None
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
    home = cfg.get("home", "")
    prompt = cfg.get("prompt")
    if prompt and len(prompt) > 1 and prompt[0] == prompt[-1] == "'":
        prompt = prompt[1:-1]  # venv writes it as repr() does
    return Stranded(
        prefix=prefix,
        gone=gone,
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
    python, why = venv.python()
    if python is None:
        return Remade(path=str(venv.prefix), gone=venv.gone, error=why)
    if dry_run:
        return Remade(path=str(venv.prefix), gone=venv.gone, python=str(python))
    bin_dir = venv.prefix / "bin"
    try:
        for entry in os.scandir(bin_dir):
            # Only links that lead nowhere: venv leaves any link that exists as it is.
            named = _interpreter_name(entry.name)
            if named and entry.is_symlink() and not os.path.exists(entry.path):  # noqa: PTH110
                os.unlink(entry.path)  # noqa: PTH108
    except OSError as e:
        return Remade(path=str(venv.prefix), gone=venv.gone, error=f"{bin_dir}: {e.strerror}")
    argv = [str(python), "-I", "-m", "venv"]
    if venv.system_site:
        argv.append("--system-site-packages")
    if not venv.pip:
        argv.append("--without-pip")
    if venv.prompt:
        argv += ["--prompt", venv.prompt]
    outcome = call([*argv, str(venv.prefix)], deadline=deadline)
    if not outcome.ok:
        return Remade(
            path=str(venv.prefix), gone=venv.gone, error=f"{python} -m venv: {outcome.tail(4)}"
        )
    return Remade(path=str(venv.prefix), gone=venv.gone, python=str(python))
