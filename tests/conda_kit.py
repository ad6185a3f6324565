"""Real conda packages, offline: `.conda` archives built with conda-package-handling, a
local channel indexed with py-rattler, prefixes created and changed by py-rattler's
installer, which writes `conda-meta/` as conda does.

py-rattler runs in a child process: its runtime may abort while the interpreter exits,
which must not take the test process down with it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("rattler", reason="py-rattler (the test extra) is needed for conda tests")
pytest.importorskip("conda_package_handling", reason="conda-package-handling is needed")


@dataclass(frozen=True)
class CondaPkg:
    name: str
    version: str
    build: str = "h0_0"
    depends: tuple[str, ...] = ()
    files: dict[str, bytes] = field(default_factory=dict)
    """Path in the prefix -> content; a share/<name>.txt when empty."""

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.build}.conda"


def build_conda(pkg: CondaPkg, channel: Path) -> Path:
    """A noarch `.conda` archive of `pkg` in `channel/noarch` (conda-package-handling)."""
    from conda_package_handling import api

    out = channel / "noarch"
    out.mkdir(parents=True, exist_ok=True)
    files = pkg.files or {f"share/{pkg.name}.txt": f"{pkg.name} {pkg.version}\n".encode()}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        (src / "info").mkdir()
        paths = []
        for rel, data in files.items():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(data)
            digest = hashlib.sha256(data).hexdigest()
            paths.append({"_path": rel, "path_type": "hardlink", "sha256": digest,
                          "size_in_bytes": len(data)})  # fmt: skip
        index = {"name": pkg.name, "version": pkg.version, "build": pkg.build, "build_number": 0,
                 "depends": list(pkg.depends), "subdir": "noarch", "license": "MIT"}  # fmt: skip
        (src / "info" / "index.json").write_text(json.dumps(index))
        (src / "info" / "files").write_text("".join(f"{p}\n" for p in files))
        (src / "info" / "paths.json").write_text(json.dumps({"paths": paths, "paths_version": 1}))
        api.create(str(src), None, pkg.filename, out_folder=str(out))
    return out / pkg.filename


_RATTLER = """
import asyncio, json, os, sys
import rattler
from rattler.index import index_fs

args = json.loads(sys.argv[1])

async def main():
    if args["op"] == "index":
        await index_fs(args["channel"], force=True)
        return
    prefix = args["prefix"]
    meta = os.path.join(prefix, "conda-meta")
    names = sorted(os.listdir(meta)) if os.path.isdir(meta) else []
    installed = [rattler.PrefixRecord.from_path(os.path.join(meta, n))
                 for n in names if n.endswith(".json")]
    keep = [r for r in installed if r.name.normalized not in args.get("drop", [])]
    specs = args.get("specs", [])
    records = []
    if specs:
        records = await rattler.solve(sources=args["channels"], specs=specs,
                                      platforms=["linux-64", "noarch"], locked_packages=[
                                          r for r in keep if r.name.normalized not in
                                          {s.split("=")[0].split("::")[-1] for s in specs}])
    wanted = {r.name.normalized for r in records}
    final = records + [r for r in keep if r.name.normalized not in wanted]
    await rattler.install(final, target_prefix=prefix, installed_packages=installed,
                          cache_dir=args["cache"], show_progress=False)

asyncio.run(main())
sys.stdout.flush()
os._exit(0)
"""


def rattler(**args: object) -> None:
    """Run one py-rattler operation in a child (see the module docstring)."""
    proc = subprocess.run(
        [sys.executable, "-c", _RATTLER, json.dumps(args)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise AssertionError(f"rattler {args.get('op')} failed:\n{proc.stdout}\n{proc.stderr}")


def index(channel: Path) -> None:
    rattler(op="index", channel=str(channel))


def conda_install(prefix: Path, channel: Path, *specs: str, cache: Path) -> None:
    """Solve `specs` against the local channel and link them into `prefix` (py-rattler)."""
    rattler(op="install", prefix=str(prefix), channels=[f"file://{channel}"], specs=list(specs),
            cache=str(cache))  # fmt: skip


def conda_remove(prefix: Path, *names: str, cache: Path) -> None:
    """Unlink `names` from `prefix` (py-rattler), leaving the rest as it is."""
    rattler(op="install", prefix=str(prefix), channels=[], drop=list(names), cache=str(cache))


def add_history(prefix: Path, verb: str, *specs: str) -> None:
    """Append a transaction to conda-meta/history as conda writes it (rattler leaves it
    empty)."""
    with (prefix / "conda-meta" / "history").open("a") as f:
        f.write(
            f"==> 2026-01-01 00:00:00 <==\n# cmd: conda {verb}\n# {verb} specs: {list(specs)}\n"
        )
