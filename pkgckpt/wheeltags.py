"""Which wheels an environment's interpreter installs: its tags, by `packaging.tags`.

    TargetTags(env).rank(tags) -> int | None
        The best rank (lower is better) of a wheel's tags for `env`; None: it does not
        install there. What a rebase picks a find-links wheel by, and what decides
        whether a captured wheel (an artifact) fits a new interpreter.
    wheel_tags(filename) -> frozenset[Tag] | None
        The tags a wheel's file name carries; None: not a wheel's name.
    fits(env, artifact) -> str | None
        Why a captured wheel cannot be installed in `env`; None when it can.

The tags are the interpreter's as the manifest and the probe describe it (version,
implementation, ABI, platform), on this machine's C library: restore runs in the
container it restores. Never this process's ABI: pkgckpt's own interpreter may be
another build than the one it restores for (a free-threaded 3.13t kernel, PyPy).

A wheel's tags are read from its name with `packaging.tags.parse_tag`, not
`packaging.utils`: a restore from artifacts checks every file this way, and needs no
version parsing for it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .rmatch import minor

if TYPE_CHECKING:
    from packaging.tags import Tag

    from .manifest import Artifact, Environment

_PURE_RANK = 1 << 30
"""Where the ranks of pure-Python tags start: after every other tag, as in the full list."""
_SHORT = {"cpython": "cp", "pypy": "pp"}
"""PEP 425's interpreter abbreviations; another implementation goes by its own name."""


def _python(env: Environment) -> tuple[tuple[int, int], str]:
    """The Python version the tags of `env` are for (3.0 when not known, as before the
    manifest recorded it) and its interpreter tag (`cp311`, `pp310`)."""
    major, _, rest = (minor(env.interpreter) or "3.0").partition(".")
    version = (int(major), int(rest))
    implementation = env.implementation or "cpython"
    return version, f"{_SHORT.get(implementation, implementation)}{version[0]}{version[1]}"


def target_tags(env: Environment) -> list[Tag]:
    """The wheel tags an interpreter of `env` installs, best first."""
    import sysconfig

    from packaging import tags

    version, interpreter = _python(env)
    here = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    platforms = list(tags.platform_tags()) if env.platform in (None, here) else [env.platform]
    if (env.implementation or "cpython") == "cpython":
        # Not recorded (an older manifest): the plain ABI, what almost every CPython is.
        abi = env.abi or interpreter
        # A debug build (cp311d) loads its plain ABI's extensions too, as packaging says.
        abis = [abi, abi[:-1]] if abi.endswith("d") and version >= (3, 8) else [abi]
        found = list(tags.cpython_tags(version, abis, platforms))
    else:
        # Not recorded: only its `none` ABI.
        found = list(tags.generic_tags(interpreter, [env.abi] if env.abi else [], platforms))
    return found + list(tags.compatible_tags(version, interpreter, platforms))


class TargetTags:
    """`target_tags(env)` as ranks (lower is better), computed only as far as needed.

    The full list is ~900 tags (every ABI and every manylinux level of the platform, ~2 ms
    and the platform's probing). A pure-Python wheel (`*-none-any`, most of what users
    install) needs only the ~15 tags that end that list: `compatible_tags` gives them, in
    the same order, without the platforms. A wheel with a platform tag is ranked by the
    full list, where every pure tag comes after every other (`_PURE_RANK`)."""

    def __init__(self, env: Environment) -> None:
        self._env = env
        self._full: list[Tag] | None = None
        self._ranks: dict[Tag, int] | None = None
        self._pure: dict[Tag, int] | None = None

    def full(self) -> list[Tag]:
        if self._full is None:
            self._full = target_tags(self._env)
        return self._full

    def rank(self, tags: Iterable[Tag]) -> int | None:
        """The best rank among `tags`; None: none of them installs here."""
        best: int | None = None
        for tag in tags:
            if tag.platform == "any":
                pure = self._pure_ranks().get(tag)
                rank = None if pure is None else _PURE_RANK + pure
            else:
                rank = self._full_ranks().get(tag)
            if rank is not None and (best is None or rank < best):
                best = rank
        return best

    def _full_ranks(self) -> dict[Tag, int]:
        if self._ranks is None:
            self._ranks = {t: i for i, t in enumerate(self.full())}
        return self._ranks

    def _pure_ranks(self) -> dict[Tag, int]:
        if self._pure is None:
            from packaging.tags import compatible_tags

            version, interpreter = _python(self._env)
            # One platform that is not "any", filtered out: an empty list would mean
            # "this machine's platforms" to packaging before 26.
            pure = compatible_tags(version, interpreter, ["none"])
            self._pure = {t: i for i, t in enumerate(t for t in pure if t.platform == "any")}
        return self._pure


def wheel_tags(filename: str) -> frozenset[Tag] | None:
    """The tags of the wheel named `filename`
    (`{name}-{version}(-{build})?-{python}-{abi}-{platform}.whl`); None: not a wheel's name."""
    from packaging.tags import parse_tag

    parts = filename.removesuffix(".whl").split("-")
    if not filename.endswith(".whl") or len(parts) not in (5, 6) or not all(parts):
        return None
    return parse_tag("-".join(parts[-3:]))


@functools.lru_cache(maxsize=8)
def _target(env: Environment) -> TargetTags:
    # One per environment: a restore asks for each of its artifacts.
    return TargetTags(env)


def fits(env: Environment, artifact: Artifact) -> str | None:
    """Why the wheel `artifact.file` cannot be installed in `env`'s interpreter, or None."""
    tags = wheel_tags(artifact.file.rsplit("/", 1)[-1])
    if tags is None:
        return f"{artifact.file} is not a wheel's name"
    if minor(env.interpreter) is None:
        return "the interpreter's version is not known"
    if _target(env).rank(tags) is None:
        wanted = ", ".join(sorted(str(t) for t in tags)[:3])
        abi = f" ({env.abi})" if env.abi else ""
        return (
            f"its tags ({wanted}) do not fit "
            f"{env.implementation or 'python'} {env.interpreter}{abi}"
        )
    return None
